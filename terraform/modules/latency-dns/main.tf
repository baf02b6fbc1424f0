# The DNS alternative to Global Accelerator: hostname has one latency record per
# region (alias to the region's NLB). Route 53 answers each resolver with the region of
# lowest latency among the healthy ones; a Route 53 health check per region (HTTPS
# <port>/health, 503 while draining) takes a lost region out of the answers.
# Alias records carry the NLB's TTL (60 s): after a region fails, clients that
# resolved it before may keep its address for up to that long (resolvers may hold it
# longer); Global Accelerator does not have this delay.

resource "aws_route53_health_check" "region" {
  for_each = var.endpoints

  type              = "HTTPS"
  fqdn              = each.value.lb_dns_name
  port              = var.port
  resource_path     = var.health_check_path
  request_interval  = var.health_check_interval_seconds
  failure_threshold = var.health_check_failure_threshold
  # the node's certificate names hostname, not the NLB's name; Route 53 does not
  # validate certificates, SNI only selects one
  enable_sni = true

  tags = {
    Name = "prscd-${each.key}"
  }
}

resource "aws_route53_record" "latency" {
  for_each = var.endpoints

  zone_id         = var.zone_id
  name            = var.hostname
  type            = "A"
  set_identifier  = "prscd-${each.key}"
  health_check_id = aws_route53_health_check.region[each.key].id

  latency_routing_policy {
    region = each.value.aws_region
  }

  alias {
    name                   = each.value.lb_dns_name
    zone_id                = each.value.lb_zone_id
    evaluate_target_health = true
  }
}
