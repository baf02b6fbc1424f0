# AWS Global Accelerator in front of the regions: two static anycast IPv4 addresses
# announced from every edge location. A browser's packets enter AWS at the nearest
# edge and go to the nearest healthy endpoint group (region). Two listeners on the
# same port: TCP for WebSocket over TLS, UDP for WebTransport (QUIC). A region whose
# endpoint fails its health checks gets no new connections; its clients reconnect
# and land in the next-nearest healthy region.
#
# Health: for EC2 and EIP endpoints Global Accelerator checks HTTPS <port>/health
# itself (settings below); for NLB endpoints it follows the NLB's target health,
# which terraform/modules/region configures as HTTPS /health too.

resource "aws_globalaccelerator_accelerator" "this" {
  name            = var.name
  ip_address_type = "IPV4"
  enabled         = true
}

resource "aws_globalaccelerator_listener" "tcp" {
  accelerator_arn = aws_globalaccelerator_accelerator.this.id
  protocol        = "TCP"
  # a client keeps its region while it stays healthy
  client_affinity = "SOURCE_IP"

  port_range {
    from_port = var.port
    to_port   = var.port
  }
}

resource "aws_globalaccelerator_listener" "udp" {
  accelerator_arn = aws_globalaccelerator_accelerator.this.id
  protocol        = "UDP"
  client_affinity = "SOURCE_IP"

  port_range {
    from_port = var.port
    to_port   = var.port
  }
}

resource "aws_globalaccelerator_endpoint_group" "tcp" {
  for_each = var.endpoints

  listener_arn                  = aws_globalaccelerator_listener.tcp.id
  endpoint_group_region         = each.value.aws_region
  health_check_protocol         = "HTTPS"
  health_check_port             = var.port
  health_check_path             = var.health_check_path
  health_check_interval_seconds = var.health_check_interval_seconds
  threshold_count               = var.health_check_threshold
  traffic_dial_percentage       = 100

  endpoint_configuration {
    endpoint_id = each.value.endpoint_id
    weight      = 100
  }
}

resource "aws_globalaccelerator_endpoint_group" "udp" {
  for_each = var.endpoints

  listener_arn                  = aws_globalaccelerator_listener.udp.id
  endpoint_group_region         = each.value.aws_region
  health_check_protocol         = "HTTPS"
  health_check_port             = var.port
  health_check_path             = var.health_check_path
  health_check_interval_seconds = var.health_check_interval_seconds
  threshold_count               = var.health_check_threshold
  traffic_dial_percentage       = 100

  endpoint_configuration {
    endpoint_id = each.value.endpoint_id
    weight      = 100
  }
}

# hostname -> the accelerator (browsers and the TLS certificate use the name).
resource "aws_route53_record" "alias" {
  count = var.zone_id != "" && var.hostname != "" ? 1 : 0

  zone_id = var.zone_id
  name    = var.hostname
  type    = "A"

  alias {
    name                   = aws_globalaccelerator_accelerator.this.dns_name
    zone_id                = aws_globalaccelerator_accelerator.this.hosted_zone_id
    evaluate_target_health = false
  }
}
