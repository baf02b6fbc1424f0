output "url" {
  description = "What browsers use: createPresence(url, ...)."
  value       = var.port == 443 ? "https://${var.hostname}/v1" : "https://${var.hostname}:${var.port}/v1"
}

output "anycast_ips" {
  description = "Global Accelerator's two static anycast IPv4 addresses (null with front_door = \"latency-dns\")."
  value       = one(module.accelerator[*].ip_addresses)
}

output "accelerator_dns_name" {
  description = "Global Accelerator's DNS name (null with front_door = \"latency-dns\")."
  value       = one(module.accelerator[*].dns_name)
}

output "latency_health_check_ids" {
  description = "Route 53 health check per region (null with front_door = \"accelerator\")."
  value       = one(module.latency_dns[*].health_check_ids)
}

output "regions" {
  description = "Per region: its own endpoint (the NLB, bypassing the front door), its router's name, public and private address, and the SANs its router certificate needs."
  value = {
    for name, region in local.regions : name => {
      endpoint          = region.endpoint
      router_name       = region.router_name
      router_public_ip  = region.router_public_ip
      router_private_ip = region.router_private_ip
      router_cert_sans  = region.router_cert_sans
      node_asg          = region.node_asg_name
    }
  }
}
