variable "zone_id" {
  description = "Public Route 53 zone of hostname."
  type        = string
}

variable "hostname" {
  description = "Name browsers connect to; one latency record per region."
  type        = string
}

variable "port" {
  description = "The nodes' port (TCP for the HTTPS health check; UDP follows the same record)."
  type        = number
}

variable "endpoints" {
  description = "Per region: its AWS region (the latency region of the record) and the NLB's DNS name and hosted zone (alias target)."
  type = map(object({
    aws_region  = string
    lb_dns_name = string
    lb_zone_id  = string
  }))
}

variable "health_check_path" {
  description = "Path of the nodes' health endpoint (200 serving, 503 draining)."
  type        = string
  default     = "/health"
}

variable "health_check_interval_seconds" {
  description = "Route 53 health check request interval (10 or 30)."
  type        = number
  default     = 10
}

variable "health_check_failure_threshold" {
  description = "Consecutive failures before a region is taken out of DNS answers."
  type        = number
  default     = 2
}
