output "ip_addresses" {
  description = "The two static anycast IPv4 addresses."
  value       = flatten(aws_globalaccelerator_accelerator.this.ip_sets[*].ip_addresses)
}

output "dns_name" {
  description = "The accelerator's own DNS name."
  value       = aws_globalaccelerator_accelerator.this.dns_name
}

output "endpoint_group_arns" {
  description = "Endpoint groups per region and protocol."
  value = {
    for name in keys(var.endpoints) : name => {
      tcp = aws_globalaccelerator_endpoint_group.tcp[name].arn
      udp = aws_globalaccelerator_endpoint_group.udp[name].arn
    }
  }
}
