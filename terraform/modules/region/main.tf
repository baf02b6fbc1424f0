# One prscd region: a VPC with two public subnets, an autoscaling group of nodes
# (launch template; prscd as the hardened systemd unit deploy/systemd/prscd.service)
# behind a network load balancer with one TCP_UDP listener on var.port, and one
# zenohd router (deploy/systemd/zenohd.service, deploy/zenoh/router-<name>.json5) with
# a fixed private address and an Elastic IP named zenoh-<name>.<mesh_domain>.
# Certificates and the app table come from SSM Parameter Store at boot.

locals {
  repo_deploy       = "${path.module}/../../../deploy"
  subnet_cidrs      = [for i in range(2) : cidrsubnet(var.vpc_cidr, 8, i)]
  router_private_ip = cidrhost(local.subnet_cidrs[0], 10)
  router_name       = "zenoh-${var.name}.${var.mesh_domain}"
  ssm_node          = "${var.ssm_prefix}/${var.name}/node"
  ssm_router        = "${var.ssm_prefix}/${var.name}/router"
}

data "aws_availability_zones" "available" {
  state = "available"
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# Amazon Linux 2023 (glibc 2.34, systemd 252, AWS CLI v2), x86_64.
data "aws_ssm_parameter" "al2023" {
  name = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
}

# ---- network -------------------------------------------------------------

resource "aws_vpc" "this" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true

  tags = {
    Name = "prscd-${var.name}"
  }
}

resource "aws_internet_gateway" "this" {
  vpc_id = aws_vpc.this.id

  tags = {
    Name = "prscd-${var.name}"
  }
}

resource "aws_subnet" "public" {
  count = 2

  vpc_id                  = aws_vpc.this.id
  cidr_block              = local.subnet_cidrs[count.index]
  availability_zone       = data.aws_availability_zones.available.names[count.index]
  map_public_ip_on_launch = true

  tags = {
    Name = "prscd-${var.name}-public-${count.index}"
  }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.this.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.this.id
  }

  tags = {
    Name = "prscd-${var.name}-public"
  }
}

resource "aws_route_table_association" "public" {
  count = 2

  subnet_id      = aws_subnet.public[count.index].id
  route_table_id = aws_route_table.public.id
}

# ---- security groups -----------------------------------------------------

resource "aws_security_group" "node" {
  name        = "prscd-${var.name}-node"
  description = "prscd nodes: var.port on TCP and UDP from anywhere"
  vpc_id      = aws_vpc.this.id
}

resource "aws_vpc_security_group_ingress_rule" "node_tcp" {
  security_group_id = aws_security_group.node.id
  description       = "WebSocket over TLS and /health"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = var.port
  to_port           = var.port
}

resource "aws_vpc_security_group_ingress_rule" "node_udp" {
  security_group_id = aws_security_group.node.id
  description       = "WebTransport (QUIC, HTTP/3)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "udp"
  from_port         = var.port
  to_port           = var.port
}

resource "aws_vpc_security_group_egress_rule" "node_all" {
  security_group_id = aws_security_group.node.id
  description       = "router, SSM, downloads"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

resource "aws_security_group" "router" {
  name        = "prscd-${var.name}-router"
  description = "zenoh router: zenoh_port from the other regions' routers and this region's nodes only"
  vpc_id      = aws_vpc.this.id
}

# count, not for_each: the other routers' addresses are only known after apply.
resource "aws_vpc_security_group_ingress_rule" "router_from_peers" {
  count = length(var.peer_router_ips)

  security_group_id = aws_security_group.router.id
  description       = "zenoh TLS from another region's router"
  cidr_ipv4         = "${var.peer_router_ips[count.index]}/32"
  ip_protocol       = "tcp"
  from_port         = var.zenoh_port
  to_port           = var.zenoh_port
}

resource "aws_vpc_security_group_ingress_rule" "router_from_nodes" {
  security_group_id            = aws_security_group.router.id
  description                  = "zenoh TLS from this region's nodes"
  referenced_security_group_id = aws_security_group.node.id
  ip_protocol                  = "tcp"
  from_port                    = var.zenoh_port
  to_port                      = var.zenoh_port
}

resource "aws_vpc_security_group_egress_rule" "router_all" {
  security_group_id = aws_security_group.router.id
  description       = "the other routers, SSM, downloads"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
}

# ---- IAM: SSM parameters (certificates, apps), Session Manager, binaries ----

resource "aws_iam_role" "node" {
  name = "prscd-${var.name}-node"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role" "router" {
  name               = "prscd-${var.name}-router"
  assume_role_policy = aws_iam_role.node.assume_role_policy
}

resource "aws_iam_role_policy" "node" {
  name = "prscd-node"
  role = aws_iam_role.node.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [{
        Effect   = "Allow"
        Action   = ["ssm:GetParameter"]
        Resource = "arn:${data.aws_partition.current.partition}:ssm:*:${data.aws_caller_identity.current.account_id}:parameter${local.ssm_node}/*"
      }],
      [for arn in var.artifact_bucket_arns : {
        Effect   = "Allow"
        Action   = ["s3:GetObject"]
        Resource = "${arn}/*"
      }]
    )
  })
}

resource "aws_iam_role_policy" "router" {
  name = "prscd-router"
  role = aws_iam_role.router.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [{
        Effect   = "Allow"
        Action   = ["ssm:GetParameter"]
        Resource = "arn:${data.aws_partition.current.partition}:ssm:*:${data.aws_caller_identity.current.account_id}:parameter${local.ssm_router}/*"
      }],
      [for arn in var.artifact_bucket_arns : {
        Effect   = "Allow"
        Action   = ["s3:GetObject"]
        Resource = "${arn}/*"
      }]
    )
  })
}

# Shell access through Session Manager; no SSH port anywhere.
resource "aws_iam_role_policy_attachment" "node_ssm" {
  role       = aws_iam_role.node.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_role_policy_attachment" "router_ssm" {
  role       = aws_iam_role.router.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AmazonSSMManagedInstanceCore"
}

resource "aws_iam_instance_profile" "node" {
  name = "prscd-${var.name}-node"
  role = aws_iam_role.node.name
}

resource "aws_iam_instance_profile" "router" {
  name = "prscd-${var.name}-router"
  role = aws_iam_role.router.name
}

# ---- zenoh router ----------------------------------------------------------

resource "aws_instance" "router" {
  ami                         = data.aws_ssm_parameter.al2023.value
  instance_type               = var.router_instance_type
  subnet_id                   = aws_subnet.public[0].id
  private_ip                  = local.router_private_ip
  vpc_security_group_ids      = [aws_security_group.router.id]
  iam_instance_profile        = aws_iam_instance_profile.router.name
  user_data_replace_on_change = true
  user_data = templatefile("${path.module}/templates/router-user-data.sh.tftpl", {
    zenohd_url    = var.zenohd_url
    zenohd_sha256 = var.zenohd_sha256
    ssm_path      = local.ssm_router
    router_json5  = replace(file("${local.repo_deploy}/zenoh/router-${var.name}.json5"), "mesh.example.com", var.mesh_domain)
    unit          = file("${local.repo_deploy}/systemd/zenohd.service")
  })

  metadata_options {
    http_tokens = "required"
  }

  root_block_device {
    encrypted   = true
    volume_size = 8
  }

  tags = {
    Name = "prscd-${var.name}-router"
  }

  lifecycle {
    ignore_changes = [ami]
  }
}

resource "aws_eip" "router" {
  domain = "vpc"

  tags = {
    Name = "prscd-${var.name}-router"
  }
}

resource "aws_eip_association" "router" {
  instance_id   = aws_instance.router.id
  allocation_id = aws_eip.router.id
}

# The other regions' routers dial tls/zenoh-<name>.<mesh_domain>:<zenoh_port>.
resource "aws_route53_record" "router" {
  zone_id = var.zone_id
  name    = local.router_name
  type    = "A"
  ttl     = 60
  records = [aws_eip.router.public_ip]
}

# ---- nodes -------------------------------------------------------------------

resource "aws_launch_template" "node" {
  name_prefix            = "prscd-${var.name}-node-"
  image_id               = data.aws_ssm_parameter.al2023.value
  instance_type          = var.node_instance_type
  vpc_security_group_ids = [aws_security_group.node.id]
  update_default_version = true
  user_data = base64encode(templatefile("${path.module}/templates/node-user-data.sh.tftpl", {
    region_name      = var.name
    port             = var.port
    zenoh_connect    = "tls/${local.router_private_ip}:${var.zenoh_port}"
    drain_grace_ms   = var.drain_grace_ms
    drain_timeout_ms = var.drain_timeout_ms
    prscd_url        = var.prscd_url
    prscd_sha256     = var.prscd_sha256
    ssm_path         = local.ssm_node
    node_json5       = file("${local.repo_deploy}/zenoh/node.json5")
    unit             = file("${local.repo_deploy}/systemd/prscd.service")
  }))

  iam_instance_profile {
    name = aws_iam_instance_profile.node.name
  }

  metadata_options {
    http_tokens = "required"
  }

  tag_specifications {
    resource_type = "instance"
    tags = {
      Name = "prscd-${var.name}-node"
    }
  }
}

resource "aws_lb" "node" {
  name                             = "prscd-${var.name}"
  load_balancer_type               = "network"
  internal                         = false
  subnets                          = aws_subnet.public[*].id
  enable_cross_zone_load_balancing = true
}

# One target group for both protocols: TCP (WebSocket) and UDP (QUIC) on var.port.
resource "aws_lb_target_group" "node" {
  name        = "prscd-${var.name}"
  port        = var.port
  protocol    = "TCP_UDP"
  vpc_id      = aws_vpc.this.id
  target_type = "instance"
  # a leaving node gets no new flows for 30 s, then the ASG terminates it and
  # systemd's SIGTERM drains it (peer_offline to its channels, 503 on /health)
  deregistration_delay = 30

  health_check {
    protocol            = "HTTPS"
    port                = "traffic-port"
    path                = "/health"
    matcher             = "200"
    interval            = 10
    healthy_threshold   = 2
    unhealthy_threshold = 2
  }
}

resource "aws_lb_listener" "node" {
  load_balancer_arn = aws_lb.node.arn
  port              = var.port
  protocol          = "TCP_UDP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.node.arn
  }
}

resource "aws_autoscaling_group" "node" {
  name_prefix               = "prscd-${var.name}-node-"
  min_size                  = var.nodes.min
  desired_capacity          = var.nodes.desired
  max_size                  = var.nodes.max
  vpc_zone_identifier       = aws_subnet.public[*].id
  target_group_arns         = [aws_lb_target_group.node.arn]
  health_check_type         = "ELB"
  health_check_grace_period = 120

  launch_template {
    id      = aws_launch_template.node.id
    version = aws_launch_template.node.latest_version
  }

  instance_refresh {
    strategy = "Rolling"
    preferences {
      min_healthy_percentage = 50
    }
  }

  tag {
    key                 = "Name"
    value               = "prscd-${var.name}-node"
    propagate_at_launch = true
  }
}
