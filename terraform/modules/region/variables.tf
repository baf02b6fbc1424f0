variable "name" {
  description = "Short name of the region (eu, us, ap): MESH_ID prefix of its nodes, its router's name zenoh-<name>.<mesh_domain> and config deploy/zenoh/router-<name>.json5."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,15}$", var.name))
    error_message = "name must be a short lower-case DNS label."
  }
}

variable "vpc_cidr" {
  description = "CIDR of the region's VPC (a /16: two public /24 subnets are cut from it)."
  type        = string
}

variable "port" {
  description = "The node's one port on TCP and UDP, open to the internet."
  type        = number
  default     = 443
}

variable "zenoh_port" {
  description = "The router's zenoh TLS port."
  type        = number
  default     = 7447
}

variable "peer_router_ips" {
  description = "Public IPv4 addresses of the other regions' routers: the only internet sources allowed on this router's zenoh port."
  type        = list(string)
}

variable "zone_id" {
  description = "Public Route 53 zone in which zenoh-<name>.<mesh_domain> is created."
  type        = string
}

variable "mesh_domain" {
  description = "Domain of the routers' names; replaces mesh.example.com in the router config."
  type        = string
}

variable "prscd_url" {
  description = "https:// or s3:// URL of the prscd binary (x86_64 Linux, glibc >= 2.34)."
  type        = string
}

variable "prscd_sha256" {
  description = "SHA-256 (hex) of the prscd binary."
  type        = string
}

variable "zenohd_url" {
  description = "https:// or s3:// URL of the zenohd 1.10.2 binary (x86_64 Linux)."
  type        = string
}

variable "zenohd_sha256" {
  description = "SHA-256 (hex) of the zenohd binary."
  type        = string
}

variable "artifact_bucket_arns" {
  description = "S3 buckets the instances may read binaries from (s3:// URLs)."
  type        = list(string)
  default     = []
}

variable "ssm_prefix" {
  description = "SSM Parameter Store prefix: nodes read <prefix>/<name>/node/*, the router <prefix>/<name>/router/*."
  type        = string
  default     = "/prscd"
}

variable "node_instance_type" {
  description = "EC2 instance type of the nodes (x86_64)."
  type        = string
  default     = "c6i.large"
}

variable "router_instance_type" {
  description = "EC2 instance type of the router (x86_64)."
  type        = string
  default     = "t3.small"
}

variable "nodes" {
  description = "Node autoscaling group size."
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

variable "drain_grace_ms" {
  description = "DRAIN_GRACE_MS of the nodes: on SIGTERM, time serving with /health 503 before closing connections."
  type        = number
  default     = 2000
}

variable "drain_timeout_ms" {
  description = "DRAIN_TIMEOUT_MS of the nodes: on SIGTERM, longest wait for connections to close (the systemd unit's TimeoutStopSec must exceed grace + timeout + 2 s)."
  type        = number
  default     = 5000
}
