variable "name" {
  description = "Name of the accelerator."
  type        = string
}

variable "port" {
  description = "The nodes' one port: a TCP listener (WebSocket over TLS) and a UDP listener (WebTransport) are made on it."
  type        = number
}

variable "endpoints" {
  description = "One endpoint group per region: the AWS region and the endpoint (the region's NLB ARN, or an EC2 instance id or EIP allocation id)."
  type = map(object({
    aws_region  = string
    endpoint_id = string
  }))
}

variable "health_check_path" {
  description = "Path of the nodes' health endpoint (200 serving, 503 draining)."
  type        = string
  default     = "/health"
}

variable "health_check_interval_seconds" {
  description = "Seconds between health checks of an endpoint (10 or 30)."
  type        = number
  default     = 10
}

variable "health_check_threshold" {
  description = "Consecutive checks that change an endpoint's health."
  type        = number
  default     = 2
}

variable "zone_id" {
  description = "Route 53 zone for the alias record of hostname; empty: no record."
  type        = string
  default     = ""
}

variable "hostname" {
  description = "Name pointed at the accelerator (alias A record) when zone_id is set."
  type        = string
  default     = ""
}
