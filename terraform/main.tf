# prscd in three AWS regions: per region a VPC, an autoscaling group of nodes behind
# an NLB (one port, TCP+UDP) and a zenohd router with a fixed address; the routers
# form a TLS triangle on zenoh_port. In front, either Global Accelerator (anycast)
# or Route 53 latency records. See README.md in this directory.

provider "aws" {
  alias  = "eu"
  region = var.aws_regions["eu"]

  default_tags {
    tags = var.tags
  }
}

provider "aws" {
  alias  = "us"
  region = var.aws_regions["us"]

  default_tags {
    tags = var.tags
  }
}

provider "aws" {
  alias  = "ap"
  region = var.aws_regions["ap"]

  default_tags {
    tags = var.tags
  }
}

# Global Accelerator's API lives in us-west-2, whatever the endpoints' regions.
provider "aws" {
  alias  = "global"
  region = "us-west-2"

  default_tags {
    tags = var.tags
  }
}

locals {
  regions = {
    eu = module.eu
    us = module.us
    ap = module.ap
  }
}

module "eu" {
  source    = "./modules/region"
  providers = { aws = aws.eu }

  name     = "eu"
  vpc_cidr = var.vpc_cidrs["eu"]
  # the only addresses allowed to reach this router's zenoh port from outside
  peer_router_ips = [module.us.router_public_ip, module.ap.router_public_ip]

  port                 = var.port
  zenoh_port           = var.zenoh_port
  zone_id              = var.zone_id
  mesh_domain          = var.mesh_domain
  prscd_url            = var.prscd_url
  prscd_sha256         = var.prscd_sha256
  zenohd_url           = var.zenohd_url
  zenohd_sha256        = var.zenohd_sha256
  artifact_bucket_arns = var.artifact_bucket_arns
  ssm_prefix           = var.ssm_prefix
  node_instance_type   = var.node_instance_type
  router_instance_type = var.router_instance_type
  nodes                = var.nodes_per_region
}

module "us" {
  source    = "./modules/region"
  providers = { aws = aws.us }

  name            = "us"
  vpc_cidr        = var.vpc_cidrs["us"]
  peer_router_ips = [module.eu.router_public_ip, module.ap.router_public_ip]

  port                 = var.port
  zenoh_port           = var.zenoh_port
  zone_id              = var.zone_id
  mesh_domain          = var.mesh_domain
  prscd_url            = var.prscd_url
  prscd_sha256         = var.prscd_sha256
  zenohd_url           = var.zenohd_url
  zenohd_sha256        = var.zenohd_sha256
  artifact_bucket_arns = var.artifact_bucket_arns
  ssm_prefix           = var.ssm_prefix
  node_instance_type   = var.node_instance_type
  router_instance_type = var.router_instance_type
  nodes                = var.nodes_per_region
}

module "ap" {
  source    = "./modules/region"
  providers = { aws = aws.ap }

  name            = "ap"
  vpc_cidr        = var.vpc_cidrs["ap"]
  peer_router_ips = [module.eu.router_public_ip, module.us.router_public_ip]

  port                 = var.port
  zenoh_port           = var.zenoh_port
  zone_id              = var.zone_id
  mesh_domain          = var.mesh_domain
  prscd_url            = var.prscd_url
  prscd_sha256         = var.prscd_sha256
  zenohd_url           = var.zenohd_url
  zenohd_sha256        = var.zenohd_sha256
  artifact_bucket_arns = var.artifact_bucket_arns
  ssm_prefix           = var.ssm_prefix
  node_instance_type   = var.node_instance_type
  router_instance_type = var.router_instance_type
  nodes                = var.nodes_per_region
}

# Anycast: two static IPs announced from every AWS edge; TCP and UDP listeners on
# the port; one endpoint group per region (the region's NLB), health-checked on /health.
module "accelerator" {
  source    = "./modules/accelerator"
  count     = var.front_door == "accelerator" ? 1 : 0
  providers = { aws = aws.global }

  name     = "prscd"
  port     = var.port
  zone_id  = var.zone_id
  hostname = var.hostname
  endpoints = {
    for name, region in local.regions : name => {
      aws_region  = var.aws_regions[name]
      endpoint_id = region.nlb_arn
    }
  }
}

# The alternative: one latency record per region for hostname, each with a Route 53
# health check of the region's /health.
module "latency_dns" {
  source    = "./modules/latency-dns"
  count     = var.front_door == "latency-dns" ? 1 : 0
  providers = { aws = aws.global }

  zone_id  = var.zone_id
  hostname = var.hostname
  port     = var.port
  endpoints = {
    for name, region in local.regions : name => {
      aws_region  = var.aws_regions[name]
      lb_dns_name = region.nlb_dns_name
      lb_zone_id  = region.nlb_zone_id
    }
  }
}
