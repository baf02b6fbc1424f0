output "endpoint" {
  description = "This region's own URL (its NLB), for tests that bypass the front door; the certificate names the front door's hostname."
  value       = "https://${aws_lb.node.dns_name}:${var.port}/v1"
}

output "nlb_arn" {
  description = "ARN of the region's network load balancer (Global Accelerator endpoint)."
  value       = aws_lb.node.arn
}

output "nlb_dns_name" {
  description = "DNS name of the region's network load balancer (Route 53 alias target)."
  value       = aws_lb.node.dns_name
}

output "nlb_zone_id" {
  description = "Hosted zone of the network load balancer's DNS name (Route 53 alias)."
  value       = aws_lb.node.zone_id
}

output "router_name" {
  description = "DNS name the other regions' routers dial."
  value       = aws_route53_record.router.fqdn
}

output "router_public_ip" {
  description = "The router's Elastic IP (allowed on the other routers' zenoh port)."
  value       = aws_eip.router.public_ip
}

output "router_private_ip" {
  description = "The router's private address, which this region's nodes dial (ZENOH_CONNECT)."
  value       = local.router_private_ip
}

output "router_cert_sans" {
  description = "SANs the router's certificate needs (CERT_EXTRA_SANS for mesh/certs.sh)."
  value       = "DNS:${local.router_name},IP:${local.router_private_ip}"
}

output "node_asg_name" {
  description = "Name of the nodes' autoscaling group."
  value       = aws_autoscaling_group.node.name
}
