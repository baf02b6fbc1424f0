output "fqdn" {
  description = "The latency-routed name."
  value       = var.hostname
}

output "health_check_ids" {
  description = "Route 53 health check id per region."
  value       = { for name, check in aws_route53_health_check.region : name => check.id }
}
