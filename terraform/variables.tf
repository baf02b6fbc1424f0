variable "aws_regions" {
  description = "AWS region of each prscd region (keys eu, us, ap are the regions' names: MESH_ID prefixes and zenoh router names)."
  type        = map(string)
  default = {
    eu = "eu-central-1"
    us = "us-east-1"
    ap = "ap-southeast-1"
  }

  validation {
    condition     = length(setsubtract(["eu", "us", "ap"], keys(var.aws_regions))) == 0
    error_message = "aws_regions must name the AWS region of eu, us and ap."
  }
}

variable "vpc_cidrs" {
  description = "VPC CIDR of each region; distinct, so the VPCs can be peered later."
  type        = map(string)
  default = {
    eu = "10.10.0.0/16"
    us = "10.20.0.0/16"
    ap = "10.30.0.0/16"
  }
}

variable "port" {
  description = "The node's one port, on TCP (WebSocket over TLS, /health) and UDP (WebTransport/HTTP3), open to the internet."
  type        = number
  default     = 443
}

variable "zenoh_port" {
  description = "The zenoh routers' TLS port between regions (open only to the other regions' routers)."
  type        = number
  default     = 7447
}

variable "front_door" {
  description = "How a browser reaches its nearest region: \"accelerator\" (AWS Global Accelerator, two anycast IPs, TCP and UDP listeners) or \"latency-dns\" (Route 53 latency records with health checks)."
  type        = string
  default     = "accelerator"

  validation {
    condition     = contains(["accelerator", "latency-dns"], var.front_door)
    error_message = "front_door must be \"accelerator\" or \"latency-dns\"."
  }
}

variable "zone_id" {
  description = "Public Route 53 hosted zone holding hostname and the routers' names under mesh_domain."
  type        = string
}

variable "hostname" {
  description = "Name browsers connect to (the certificate's name), e.g. presence.example.com; in zone_id."
  type        = string
}

variable "mesh_domain" {
  description = "Domain of the zenoh routers' names (zenoh-<region>.<mesh_domain>), in zone_id; replaces mesh.example.com in deploy/zenoh/router-*.json5."
  type        = string
}

variable "prscd_url" {
  description = "Where instances download the prscd binary (x86_64 Linux, glibc >= 2.34): https:// or s3:// URL."
  type        = string
}

variable "prscd_sha256" {
  description = "SHA-256 (hex) of the prscd binary at prscd_url; instances refuse anything else."
  type        = string
}

variable "zenohd_url" {
  description = "Where routers download zenohd 1.10.2 (x86_64 Linux): https:// or s3:// URL."
  type        = string
}

variable "zenohd_sha256" {
  description = "SHA-256 (hex) of the zenohd binary at zenohd_url."
  type        = string
}

variable "artifact_bucket_arns" {
  description = "ARNs of S3 buckets holding the binaries when the URLs are s3:// (instances get s3:GetObject on them)."
  type        = list(string)
  default     = []
}

variable "ssm_prefix" {
  description = "SSM Parameter Store prefix of the certificates and app table (layout in terraform/README.md)."
  type        = string
  default     = "/prscd"
}

variable "node_instance_type" {
  description = "EC2 instance type of the prscd nodes (x86_64)."
  type        = string
  default     = "c6i.large"
}

variable "router_instance_type" {
  description = "EC2 instance type of the zenoh routers (x86_64)."
  type        = string
  default     = "t3.small"
}

variable "nodes_per_region" {
  description = "Size of each region's node autoscaling group: min, desired and max."
  type = object({
    min     = number
    desired = number
    max     = number
  })
  default = {
    min     = 2
    desired = 2
    max     = 6
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default = {
    project = "prscd"
  }
}
