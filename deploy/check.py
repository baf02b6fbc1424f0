#!/usr/bin/env python3
"""Offline validation of the deployment files: Dockerfile, deploy/ and terraform/.

    $PRSCD_TOOLS/deploy-venv/bin/python deploy/check.py [--root DIR]

Needs python-hcl2, PyYAML and json5 (deploy/install-checkers.sh puts them in a
venv). Optional tools are used when present and reported as skipped otherwise:
terraform (fmt -check; validate against a local provider mirror), kubectl
(kustomize rendering), systemd-analyze (verify, security), and the mesh venv's
zenoh binding (zenoh 1.10.2's own config parser).

Nothing here touches the network. Every line of output is `ok`, `FAIL` or
`note` (skipped or informational); the exit status is 1 if anything failed.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import hcl2
import json5
import yaml

# ----------------------------------------------------------------------------
# reporting


class Report:
    def __init__(self) -> None:
        self.failed = 0
        self.passed = 0

    def ok(self, what: str) -> None:
        self.passed += 1
        print(f"ok    {what}", flush=True)

    def fail(self, what: str) -> None:
        self.failed += 1
        print(f"FAIL  {what}", flush=True)

    def note(self, what: str) -> None:
        print(f"note  {what}", flush=True)

    def check(self, cond: bool, what: str, why: str = "") -> bool:
        if cond:
            self.ok(what)
        else:
            self.fail(f"{what}{': ' + why if why else ''}")
        return cond


R = Report()


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


# ----------------------------------------------------------------------------
# the node's drain bound, from the sources


def drain_bound(root: Path) -> dict:
    """DRAIN_GRACE_MS / DRAIN_TIMEOUT_MS defaults and the fixed closing tail after
    the drain (QUIC endpoint + zenoh session), read from src/."""
    config = (root / "src/config.rs").read_text()
    server = (root / "src/server.rs").read_text()

    def default(name: str) -> int:
        m = re.search(rf'env = "{name}", default_value_t = ([\d_]+)', config)
        if not m:
            raise SystemExit(f"cannot find the default of {name} in src/config.rs")
        return int(m.group(1).replace("_", ""))

    tail = 0.0
    for pattern in (r"shut_down\(&endpoint,\s*Duration::from_secs\((\d+)\)\)",
                    r"mesh\.close\(Duration::from_secs\((\d+)\)\)"):
        m = re.search(pattern, server)
        tail += float(m.group(1)) if m else 1.0
    return {"grace_ms": default("DRAIN_GRACE_MS"), "timeout_ms": default("DRAIN_TIMEOUT_MS"), "tail_s": tail}


def stop_seconds(drain: dict, env: dict) -> float:
    """Longest time from SIGTERM to exit with these settings."""
    grace = int(env.get("DRAIN_GRACE_MS", drain["grace_ms"]))
    timeout = int(env.get("DRAIN_TIMEOUT_MS", drain["timeout_ms"]))
    return (grace + timeout) / 1000 + drain["tail_s"]


def read_env_file(path: Path) -> dict:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            env[k.strip()] = v.strip()
    return env


# ----------------------------------------------------------------------------
# Terraform

META_ARGS = {"source", "version", "providers", "count", "for_each", "depends_on"}
IDENT = r"[A-Za-z_][A-Za-z0-9_-]*"


def unquote(s: str) -> str:
    return s[1:-1] if len(s) >= 2 and s[0] == s[-1] == '"' else s


def code_only(expr: str) -> str:
    """The expression with the text of string literals blanked out, keeping the
    code inside ${...} interpolations (so "aws_foo.bar" in a string is not a
    reference, but "${var.x}" is)."""
    out = []
    stack = ["code"]
    i = 0
    while i < len(expr):
        c = expr[i]
        top = stack[-1]
        if top in ("code", "brace", "interp"):
            if c == '"':
                stack.append("str")
                out.append(" ")
            elif c == "{":
                stack.append("brace")
                out.append(c)
            elif c == "}":
                if top == "interp":
                    stack.pop()
                    out.append(" ")
                else:
                    if top == "brace":
                        stack.pop()
                    out.append(c)
            else:
                out.append(c)
        else:  # in a string literal
            if c == "\\":
                out.append("  ")
                i += 2
                continue
            if expr.startswith("$${", i) or expr.startswith("%%{", i):
                out.append("   ")
                i += 3
                continue
            if expr.startswith("${", i) or expr.startswith("%{", i):
                stack.append("interp")
                out.append("  ")
                i += 2
                continue
            if c == '"':
                stack.pop()
            out.append(" ")
        i += 1
    return "".join(out)


def strings_in(value):
    """Every string (expression or literal) in a python-hcl2 value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if not k.startswith("__"):
                yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


class TfModule:
    def __init__(self, path: Path):
        self.path = path
        self.variables: dict[str, dict] = {}
        self.outputs: set[str] = set()
        self.locals: dict[str, object] = {}
        self.resources: set[str] = set()
        self.data: set[str] = set()
        self.modules: dict[str, dict] = {}
        self.providers: set[str] = set()
        self.bodies: list[tuple[str, object]] = []  # (where, value) to scan for references
        self.errors: list[str] = []
        for f in sorted(path.glob("*.tf")):
            try:
                with open(f) as fh:
                    doc = hcl2.load(fh)
            except Exception as e:  # noqa: BLE001 - any parse error is a failure
                self.errors.append(f"{f}: does not parse: {str(e).splitlines()[0]}")
                continue
            self._collect(f.name, doc)

    def _collect(self, fname: str, doc: dict) -> None:
        for block in doc.get("variable", []):
            for name, body in block.items():
                self.variables[unquote(name)] = body
                for v in body.get("validation", []):
                    self.bodies.append((f"{fname}: variable {unquote(name)}", v))
        for block in doc.get("output", []):
            for name, body in block.items():
                self.outputs.add(unquote(name))
                self.bodies.append((f"{fname}: output {unquote(name)}", body))
        for block in doc.get("locals", []):
            for name, value in block.items():
                if not name.startswith("__"):
                    self.locals[name] = value
                    self.bodies.append((f"{fname}: local.{name}", value))
        for kind, store in (("resource", self.resources), ("data", self.data)):
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    for rname, body in named.items():
                        addr = f"{unquote(rtype)}.{unquote(rname)}"
                        store.add(addr)
                        self.bodies.append((f"{fname}: {kind} {addr}", body))
        for block in doc.get("module", []):
            for name, body in block.items():
                self.modules[unquote(name)] = body
                args = {k: v for k, v in body.items() if k != "source" and not k.startswith("__")}
                self.bodies.append((f"{fname}: module {unquote(name)}", args))
        for block in doc.get("terraform", []):
            for rp in block.get("required_providers", []):
                self.providers.update(k for k in rp if k != "__is_block__")
        for block in doc.get("provider", []):
            for name, body in block.items():
                self.bodies.append((f"{fname}: provider {unquote(name)}", body))

    def local_path(self, name: str, depth: int = 0) -> str | None:
        """A local whose value is a path-like string, resolved."""
        v = self.locals.get(name)
        if not isinstance(v, str) or depth > 5:
            return None
        return self.resolve_path(v, depth + 1)

    def largest_match(self, s: str) -> str | None:
        """For a path with ${var.x} in it: the largest file it may name."""
        s = unquote(s)
        if s.startswith("${") and s.endswith("}") and s[2:-1].startswith('"'):
            s = unquote(s[2:-1])
        s = s.replace("${path.module}", str(self.path))
        s = re.sub(r"\$\{local\.(" + IDENT + r")\}", lambda m: self.local_path(m.group(1)) or m.group(0), s)
        pattern = re.sub(r"\$\{[^}]*\}", "*", s)
        found = [Path(p) for p in glob.glob(pattern) if Path(p).is_file()]
        return str(max(found, key=lambda p: p.stat().st_size)) if found else None

    def resolve_path(self, s: str, depth: int = 0) -> str | None:
        s = unquote(s)
        if s.startswith("${") and s.endswith("}") and s.count("${") == 1 and s[2:-1].startswith('"'):
            s = unquote(s[2:-1])
        s = s.replace("${path.module}", str(self.path))

        def sub(m):
            p = self.local_path(m.group(1), depth)
            return p if p is not None else m.group(0)

        s = re.sub(r"\$\{local\.(" + IDENT + r")\}", sub, s)
        return None if "${" in s else s


def check_terraform(root: Path) -> None:
    tf_root = root / "terraform"
    dirs = sorted({p.parent for p in tf_root.rglob("*.tf") if ".terraform" not in p.parts})
    if not dirs:
        R.fail("terraform: no .tf files")
        return
    modules = {d: TfModule(d) for d in dirs}
    for d, m in modules.items():
        rel = d.relative_to(root)
        if m.errors:
            for e in m.errors:
                R.fail(f"terraform {e}")
            continue
        R.ok(f"{rel}: {len(list(d.glob('*.tf')))} .tf files parse "
             f"({len(m.variables)} variables, {len(m.resources)} resources, {len(m.modules)} module calls, "
             f"{len(m.outputs)} outputs)")
        check_tf_variables(rel, m)
        check_tf_references(rel, m, modules)
        check_tf_module_calls(rel, m, modules)
        check_tf_files(rel, m)
    check_tf_security_groups(root, modules)
    terraform_fmt(root)
    terraform_validate(root)


def check_tf_variables(rel, m: TfModule) -> None:
    bad = []
    for name, body in m.variables.items():
        desc = unquote(str(body.get("description", ""))).strip()
        if not desc:
            bad.append(f"{name} has no description")
        if not body.get("type"):
            bad.append(f"{name} has no type")
    R.check(not bad, f"{rel}: every variable has a description and a type", "; ".join(bad))


def check_tf_references(rel, m: TfModule, modules: dict) -> None:
    problems = []
    used_vars = set()
    prefixes = sorted(m.providers) or ["aws"]
    res_re = re.compile(r"(?<![\w.])((?:" + "|".join(map(re.escape, prefixes)) + r")_[a-z0-9_]+)\.(" + IDENT + ")")
    counts = {"var": 0, "local": 0, "module": 0, "resource": 0, "data": 0}
    for where, body in m.bodies:
        for s in strings_in(body):
            code = code_only(s)
            for name in re.findall(r"(?<![\w.])var\.(" + IDENT + ")", code):
                counts["var"] += 1
                used_vars.add(name)
                if name not in m.variables:
                    problems.append(f"{where}: var.{name} is not declared")
            for name in re.findall(r"(?<![\w.])local\.(" + IDENT + ")", code):
                counts["local"] += 1
                if name not in m.locals:
                    problems.append(f"{where}: local.{name} is not declared")
            for name, _idx, attr in re.findall(
                    r"(?<![\w.])module\.(" + IDENT + r")((?:\[[^\]]*\])*)(?:\.(" + IDENT + "))?", code):
                counts["module"] += 1
                call = m.modules.get(name)
                if call is None:
                    problems.append(f"{where}: module.{name} is not declared")
                    continue
                if attr:
                    callee = modules.get((m.path / unquote(str(call.get("source", "")))).resolve())
                    if callee is not None and attr not in callee.outputs:
                        problems.append(f"{where}: module.{name}.{attr}: module {name} has no output {attr}")
            for rtype, rname in re.findall(r"(?<![\w.])data\.([a-z][a-z0-9_]*)\.(" + IDENT + ")", code):
                counts["data"] += 1
                if f"{rtype}.{rname}" not in m.data:
                    problems.append(f"{where}: data.{rtype}.{rname} is not declared")
            for rtype, rname in res_re.findall(code):
                # skip `data.aws_x.y` (handled above): the look-behind excludes "."
                counts["resource"] += 1
                if f"{rtype}.{rname}" not in m.resources:
                    problems.append(f"{where}: {rtype}.{rname} is not a declared resource")
    R.check(not problems, f"{rel}: references resolve ({', '.join(f'{v} {k}' for k, v in counts.items())})",
            "; ".join(problems))
    unused = sorted(set(m.variables) - used_vars)
    if unused:
        R.note(f"{rel}: variables declared but never used: {', '.join(unused)}")


def check_tf_module_calls(rel, m: TfModule, modules: dict) -> None:
    for name, call in m.modules.items():
        source = unquote(str(call.get("source", "")))
        target = (m.path / source).resolve()
        callee = modules.get(target)
        if callee is None:
            R.fail(f"{rel}: module {name}: source {source} is not a module of this tree")
            continue
        args = {k for k in call if k not in META_ARGS and not k.startswith("__")}
        required = {v for v, body in callee.variables.items() if "default" not in body}
        missing = sorted(required - args)
        unknown = sorted(args - set(callee.variables))
        if target.name == "region" and "name" in call:
            region = unquote(str(call["name"]))
            R.check((m.path.parent / "deploy/zenoh" / f"router-{region}.json5").is_file(),
                    f"{rel}: module {name}: deploy/zenoh/router-{region}.json5 exists for its router")
        R.check(not missing and not unknown,
                f"{rel}: module {name} ({source}) gets its {len(required)} required variables and no unknown ones",
                "; ".join(filter(None, [missing and f"missing {missing}", unknown and f"unknown {unknown}"])))


def template_vars(call_expr: str) -> tuple[str, list[str]] | None:
    """("path", [keys]) of a templatefile("path", { k = v, ... }) call, keys at the
    object's top level only."""
    m = re.search(r'templatefile\(\s*("(?:[^"\\]|\\.)*")\s*,\s*\{', call_expr)
    if not m:
        return None
    i, depth, keys, token = m.end(), 1, [], ""
    code = code_only(call_expr)
    expect_key = True
    while i < len(code) and depth > 0:
        c = code[i]
        if c in "{([":
            depth += 1
        elif c in "})]":
            depth -= 1
        elif depth == 1 and c == "=" and expect_key:
            keys.append(token.strip().split()[-1])
            expect_key = False
        elif depth == 1 and c in ",\n":
            expect_key = True
            token = ""
            i += 1
            continue
        if depth == 1 and expect_key:
            token += c
        i += 1
    return m.group(1), keys


def check_tf_files(rel, m: TfModule) -> None:
    """file()/templatefile() paths exist; templates get exactly the variables they
    use; rendered user data is valid bash under EC2's 16 KB limit."""
    for where, body in m.bodies:
        for s in strings_in(body):
            for p in re.findall(r'(?<![\w.])file\(\s*("(?:[^"\\]|\\.)*")\s*\)', s):
                path = m.resolve_path(p)
                if path is None:
                    some = m.largest_match(p)
                    R.check(some is not None, f"{rel}: {where}: file({p}) matches files "
                                              f"(e.g. {os.path.relpath(some, m.path) if some else '-'})")
                else:
                    R.check(Path(path).is_file(), f"{rel}: {where}: file {os.path.relpath(path, m.path)} exists")
            tv = template_vars(s)
            if not tv:
                continue
            tpath, keys = tv
            path = m.resolve_path(tpath)
            if path is None or not Path(path).is_file():
                R.fail(f"{rel}: {where}: template {tpath} not found")
                continue
            text = Path(path).read_text()
            used = set(re.findall(r"(?<!\$)\$\{\s*(" + IDENT + r")", text))
            directives = re.findall(r"(?<!%)%\{", text)
            missing, unused = sorted(used - set(keys)), sorted(set(keys) - used)
            name = Path(path).name
            R.check(not missing and not unused and not directives,
                    f"{rel}: {where}: template {name} uses exactly the {len(keys)} variables it is given",
                    "; ".join(filter(None, [missing and f"not given: {missing}", unused and f"never used: {unused}",
                                            directives and "has %{ } directives (not rendered here)"])))
            rendered = render_template(text, m, s)
            size = len(rendered.encode())
            if "user-data" in name or "user_data" in name:
                R.check(size <= 16384, f"{rel}: {name} renders to {size} bytes (EC2 user data limit 16384)")
            if text.startswith("#!/bin/bash") or text.startswith("#!/usr/bin/env bash"):
                with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as fh:
                    fh.write(rendered)
                r = run(["bash", "-n", fh.name])
                os.unlink(fh.name)
                R.check(r.returncode == 0, f"{rel}: {name} rendered is valid bash (bash -n)", r.stderr.strip())


def render_template(text: str, m: TfModule, call: str) -> str:
    """Substitutes ${name}: with the contents of the file() it is given when that can
    be resolved (so sizes are real), else a dummy; $${ -> ${ as Terraform does."""
    values = {}
    for key, p in re.findall(r"(" + IDENT + r")\s*=\s*(?:replace\()?file\(\s*(\"(?:[^\"\\]|\\.)*\")", call):
        path = m.resolve_path(p) or m.largest_match(p)
        if path and Path(path).is_file():
            values[key] = Path(path).read_text()
    out = re.sub(r"(?<!\$)\$\{\s*(" + IDENT + r")\s*\}", lambda mm: values.get(mm.group(1), "x1"), text)
    return out.replace("$${", "${")


def check_tf_security_groups(root: Path, modules: dict) -> None:
    """The region module opens var.port on TCP and UDP to the world, and the
    zenoh port only to the other regions' routers (and its own nodes' group)."""
    region = root / "terraform/modules/region"
    files = sorted(region.glob("*.tf"))
    rules = {}
    for f in files:
        with open(f) as fh:
            doc = hcl2.load(fh)
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                if unquote(rtype) == "aws_vpc_security_group_ingress_rule":
                    for rname, body in named.items():
                        rules[unquote(rname)] = body

    def val(body, key):
        return code_only(str(body.get(key, ""))) + unquote(str(body.get(key, "")))

    node = {n: b for n, b in rules.items() if "aws_security_group.node." in val(b, "security_group_id")}
    router = {n: b for n, b in rules.items() if "aws_security_group.router." in val(b, "security_group_id")}
    protos = {unquote(str(b.get("ip_protocol"))) for b in node.values()
              if "var.port" in val(b, "from_port") and "var.port" in val(b, "to_port")
              and unquote(str(b.get("cidr_ipv4"))) == "0.0.0.0/0"}
    R.check({"tcp", "udp"} <= protos, "terraform region: nodes' security group opens var.port on TCP and UDP to 0.0.0.0/0",
            f"protocols found: {sorted(protos)}")
    bad = []
    for n, b in router.items():
        cidr = str(b.get("cidr_ipv4", ""))
        if "referenced_security_group_id" in b:
            if "aws_security_group.node." not in val(b, "referenced_security_group_id"):
                bad.append(f"{n}: from an unexpected group")
        elif "var.peer_router_ips" not in code_only(cidr):
            bad.append(f"{n}: from {unquote(cidr)}")
        if "var.zenoh_port" not in val(b, "from_port"):
            bad.append(f"{n}: not the zenoh port")
    R.check(router and not bad,
            f"terraform region: router's security group admits zenoh_port only from peer routers and own nodes ({len(router)} rules)",
            "; ".join(bad) or "no rules")


def terraform_fmt(root: Path) -> None:
    tf = shutil.which("terraform")
    if not tf:
        R.note("terraform not on PATH: `terraform fmt -check` skipped")
        return
    r = run([tf, "fmt", "-check", "-recursive", "-diff", "-no-color", "terraform/"], cwd=root)
    R.check(r.returncode == 0, "terraform fmt -check -recursive terraform/", r.stdout.strip()[-2000:])


def terraform_validate(root: Path) -> None:
    """`terraform validate` against the real provider schema, when a local provider
    mirror is available (PRSCD_TF_PLUGIN_MIRROR, or /opt/tf-plugins): nothing is
    downloaded."""
    tf = shutil.which("terraform")
    mirror = os.environ.get("PRSCD_TF_PLUGIN_MIRROR", "/opt/tf-plugins")
    if not tf or not (Path(mirror) / "registry.terraform.io/hashicorp/aws").is_dir():
        R.note(f"terraform validate skipped (needs terraform and a provider mirror at {mirror}; "
               "no registry is contacted)")
        return
    with tempfile.TemporaryDirectory(prefix="prscd-tf-") as tmp:
        tmp = Path(tmp)
        shutil.copytree(root / "terraform", tmp / "terraform", ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
        for sub in ("zenoh", "systemd"):  # what the region module reads with file()
            shutil.copytree(root / "deploy" / sub, tmp / "deploy" / sub)
        rc = tmp / "terraform.rc"
        rc.write_text(f'provider_installation {{\n  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n'
                      '  direct {\n    exclude = ["*/*/*"]\n  }\n}\n')
        env = dict(os.environ, TF_CLI_CONFIG_FILE=str(rc), TF_IN_AUTOMATION="1", CHECKPOINT_DISABLE="1")
        r = run([tf, "init", "-backend=false", "-input=false", "-no-color"], cwd=tmp / "terraform", env=env)
        if r.returncode != 0:
            R.note("terraform init from the local mirror failed, validate skipped: "
                   + (r.stderr.strip().splitlines() or ["?"])[-1])
            return
        versions = re.findall(r"Installed (\S+ v[\d.]+)", r.stdout) or re.findall(r"Using \S+ (\S+ v[\d.]+)", r.stdout)
        r = run([tf, "validate", "-no-color"], cwd=tmp / "terraform", env=env)
        out = (r.stdout + r.stderr).strip().splitlines()
        errors = [ln.strip("│ ").strip() for ln in out if "Error:" in ln or ln.strip("│ ").startswith("on ")]
        R.check(r.returncode == 0, f"terraform validate (provider schema: {', '.join(versions) or 'mirror'})",
                "; ".join(list(dict.fromkeys(errors))[:6]) or "\n".join(out[-20:]))


# ----------------------------------------------------------------------------
# Kubernetes


def check_k8s(root: Path, drain: dict) -> None:
    k8s = root / "deploy/k8s"
    files = sorted(k8s.rglob("*.yaml")) + sorted(k8s.rglob("*.yml"))
    bad = []
    for f in files:
        try:
            list(yaml.safe_load_all(f.read_text()))
        except yaml.YAMLError as e:
            bad.append(f"{f.relative_to(root)}: {str(e).splitlines()[0]}")
    R.check(files and not bad, f"deploy/k8s: {len(files)} YAML files parse", "; ".join(bad) or "none found")
    kustomizations = [f for f in files if f.name == "kustomization.yaml"]
    for kf in kustomizations:
        check_kustomization_refs(root, kf)
    overlays = sorted(p.parent for p in kustomizations if p.parent.parent.name == "overlays")
    kubectl = shutil.which("kubectl")
    if not kubectl:
        R.note("kubectl not on PATH: overlays not rendered; checking the base manifests as written")
        docs = []
        for f in (k8s / "base").glob("*.yaml"):
            if f.name != "kustomization.yaml":
                docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
        base = yaml.safe_load((k8s / "base/kustomization.yaml").read_text())
        for gen in base.get("configMapGenerator", []):
            docs.append({"kind": "ConfigMap", "metadata": {"name": gen["name"]},
                         "data": dict(lit.split("=", 1) for lit in gen.get("literals", []))})
        check_k8s_rendered(root, "base", docs, drain, region=None)
        return
    for ov in overlays:
        r = run([kubectl, "kustomize", "--load-restrictor", "LoadRestrictionsNone", str(ov)])
        name = ov.relative_to(root)
        if not R.check(r.returncode == 0, f"{name}: kubectl kustomize renders", r.stderr.strip()):
            continue
        docs = [d for d in yaml.safe_load_all(r.stdout) if d]
        check_k8s_rendered(root, str(name), docs, drain, region=ov.name)


def check_kustomization_refs(root: Path, kf: Path) -> None:
    k = yaml.safe_load(kf.read_text()) or {}
    missing = []
    for res in k.get("resources", []):
        if not (kf.parent / res).exists():
            missing.append(res)
    for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
        for f in gen.get("files", []):
            if not (kf.parent / f.split("=", 1)[-1]).is_file():
                missing.append(f)
    for p in k.get("patches", []):
        if "path" in p and not (kf.parent / p["path"]).is_file():
            missing.append(p["path"])
    R.check(not missing, f"{kf.relative_to(root)}: referenced files exist", f"missing {missing}")


def check_k8s_rendered(root: Path, name: str, docs: list, drain: dict, region: str | None) -> None:
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    cms = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}
    deployments = by_kind.get("Deployment", []) + by_kind.get("StatefulSet", [])
    prscd = [d for d in deployments
             if any("prscd" in c.get("image", "") for c in d["spec"]["template"]["spec"]["containers"])]
    if not R.check(bool(prscd), f"{name}: has a prscd Deployment"):
        return
    for dep in prscd:
        pod = dep["spec"]["template"]["spec"]
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        for c in pod["containers"]:
            if "prscd" not in c.get("image", ""):
                continue
            env = {}
            for ef in c.get("envFrom", []):
                ref = ef.get("configMapRef", {}).get("name")
                if ref in cms:
                    env.update(cms[ref].get("data", {}))
                else:
                    R.fail(f"{name}: envFrom ConfigMap {ref} not in the rendered output")
            for e in c.get("env", []):
                if "value" in e:
                    env[e["name"]] = e["value"]
            port = int(env.get("PORT", 8443))
            cports = c.get("ports", [])
            protos = {p.get("protocol", "TCP") for p in cports if p.get("containerPort") == port}
            R.check(protos >= {"TCP", "UDP"}, f"{name}: container {c['name']} exposes PORT {port} on TCP and UDP",
                    f"protocols on {port}: {sorted(protos)}")
            for probe in ("readinessProbe", "livenessProbe"):
                get = (c.get(probe) or {}).get("httpGet") or {}
                p = get.get("port")
                p = next((cp["containerPort"] for cp in cports if cp.get("name") == p), p)
                R.check(get.get("path") == "/health" and p in (port, int(env.get("METRICS_PORT", -1))),
                        f"{name}: {probe} is GET /health on the node's port ({get.get('scheme', 'HTTP')} {p})",
                        f"got {get}")
            pre = (c.get("lifecycle") or {}).get("preStop") or {}
            pre_s = (pre.get("sleep") or {}).get("seconds", 0)
            need = pre_s + stop_seconds(drain, env)
            grace = pod.get("terminationGracePeriodSeconds", 30)
            R.check(grace > need,
                    f"{name}: terminationGracePeriodSeconds {grace} > preStop {pre_s} s + drain "
                    f"{stop_seconds(drain, env):g} s (DRAIN_GRACE_MS + DRAIN_TIMEOUT_MS + closing)")
            sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            R.check(sc.get("runAsNonRoot") is True and sc.get("allowPrivilegeEscalation") is False,
                    f"{name}: prscd runs as non-root without privilege escalation")
            connect = env.get("ZENOH_CONNECT", "")
            m = re.fullmatch(r"tls/([\w.-]+):7447", connect)
            svc_names = {s["metadata"]["name"] for s in by_kind.get("Service", [])}
            R.check(bool(m) and m.group(1).split(".")[0] in svc_names,
                    f"{name}: nodes dial their region's router over TLS ({connect})")
            if region:
                R.check(env.get("REGION") == region, f"{name}: REGION={env.get('REGION')}")
        services = [s for s in by_kind.get("Service", [])
                    if s["spec"].get("selector") and all(labels.get(k) == v for k, v in s["spec"]["selector"].items())]
        public = [s for s in services if s["spec"].get("type") in ("LoadBalancer", "NodePort")]
        R.check(bool(public), f"{name}: prscd has a public Service")
        for s in public:
            ports = {}
            for p in s["spec"]["ports"]:
                ports.setdefault(p["port"], {})[p.get("protocol", "TCP")] = p.get("targetPort", p["port"])
            bad = {n: t for n, t in ports.items() if set(t) != {"TCP", "UDP"} or len(set(t.values())) != 1}
            targets = set()
            for t in ports.values():
                for v in t.values():
                    targets.add(next((cp["containerPort"] for c in pod["containers"] for cp in c.get("ports", [])
                                      if cp.get("name") == v), v))
            R.check(not bad and targets == {port},
                    f"{name}: Service {s['metadata']['name']} serves port(s) {sorted(ports)} on TCP and UDP, "
                    f"both to container port {port}", f"per port {ports}")
    routers = [d for d in deployments
               if any("zenoh" in c.get("image", "") for c in d["spec"]["template"]["spec"]["containers"])]
    R.check(bool(routers), f"{name}: has a zenoh router Deployment")
    for dep in routers:
        for v in dep["spec"]["template"]["spec"].get("volumes", []):
            ref = (v.get("configMap") or {}).get("name")
            if ref is None:
                continue
            cm = cms.get(ref)
            if cm is None and region is None:
                R.note(f"{name}: router ConfigMap {ref} comes from the overlays (not rendered without kubectl)")
                continue
            if not R.check(cm is not None, f"{name}: router ConfigMap {ref} rendered"):
                continue
            for key, text in cm.get("data", {}).items():
                conf = json5.loads(text)
                R.check(conf.get("mode") == "router" and (region is None or conf.get("metadata", {}).get("region") == region),
                        f"{name}: router config {key} is region {conf.get('metadata', {}).get('region')}'s")
    public_routers = [s for s in by_kind.get("Service", [])
                      if s["spec"].get("type") == "LoadBalancer" and "zenoh" in s["metadata"]["name"]]
    for s in public_routers:
        ranges = s["spec"].get("loadBalancerSourceRanges") or []
        R.check(bool(ranges) and "0.0.0.0/0" not in ranges,
                f"{name}: {s['metadata']['name']} only admits {ranges}")


# ----------------------------------------------------------------------------
# systemd


def unit_keys(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        k, v = line.split("=", 1)
        keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def seconds(v: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m)?", v)
    if not m:
        return -1
    n = float(m.group(1))
    return {"ms": n / 1000, "min": n * 60, "m": n * 60}.get(m.group(2) or "s", n)


def check_systemd(root: Path, drain: dict) -> None:
    units = sorted((root / "deploy/systemd").glob("*.service"))
    if not R.check(bool(units), "deploy/systemd: unit files present"):
        return
    prscd = root / "deploy/systemd/prscd.service"
    k = unit_keys(prscd)
    one = lambda name: (k.get(name) or [""])[-1]  # noqa: E731
    env_file = root / "deploy/systemd/prscd.env"
    env = read_env_file(env_file) if env_file.is_file() else {}
    expect = {
        "User": "prscd", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE", "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "KillSignal": "SIGTERM", "Restart": "on-failure", "ExecStart": "/usr/local/bin/prscd",
    }
    wrong = [f"{n}={one(n)!r} (want {v!r})" for n, v in expect.items() if one(n) != v]
    R.check(not wrong, "prscd.service: user, capabilities (CAP_NET_BIND_SERVICE only), hardening, restart, signal",
            "; ".join(wrong))
    R.check(bool(k.get("EnvironmentFile")), f"prscd.service: EnvironmentFile={one('EnvironmentFile')}")
    stop = seconds(one("TimeoutStopSec"))
    need = stop_seconds(drain, env)
    R.check(stop > need, f"prscd.service: TimeoutStopSec {stop:g} s > drain {need:g} s "
                         f"(prscd.env DRAIN_GRACE_MS + DRAIN_TIMEOUT_MS + closing)")
    z = root / "deploy/systemd/zenohd.service"
    if z.is_file():
        zk = unit_keys(z)
        R.check(zk.get("CapabilityBoundingSet") == [""] and (zk.get("NoNewPrivileges") or [""])[-1] == "yes",
                "zenohd.service: no capabilities, NoNewPrivileges")
    sa = shutil.which("systemd-analyze")
    if not sa:
        R.note("systemd-analyze not on PATH: `systemd-analyze verify` skipped (unit keys checked above)")
        return
    with tempfile.TemporaryDirectory(prefix="prscd-units-") as tmp:
        tmp = Path(tmp)
        # verify wants ExecStart's binary to exist: point it at a stand-in
        stub = tmp / "bin"
        stub.mkdir()
        copies = []
        for u in units:
            text = u.read_text()
            for exe in re.findall(r"^ExecStart=(\S+)", text, flags=re.M):
                target = stub / Path(exe).name
                target.write_text("#!/bin/sh\n")
                target.chmod(0o755)
                text = re.sub(rf"^ExecStart={re.escape(exe)}", f"ExecStart={target}", text, flags=re.M)
            (tmp / u.name).write_text(text)
            copies.append(tmp / u.name)
        r = run([sa, "verify", "--man=no", *map(str, copies)])
        out = (r.stdout + r.stderr).strip()
        # verify exits 0 even on unknown keys and bad values: any message is a failure
        R.check(r.returncode == 0 and not out,
                f"systemd-analyze verify {' '.join(u.name for u in units)}", out.replace(str(tmp) + "/", ""))
        for c in copies:
            r = run([sa, "security", "--offline=yes", "--no-pager", str(c)])
            m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout + r.stderr)
            if not m:
                R.note(f"systemd-analyze security --offline not available here: {c.name} not scored")
                continue
            R.check(float(m.group(1)) <= 2.5, f"systemd-analyze security {c.name}: exposure {m.group(1)} (<= 2.5)")


# ----------------------------------------------------------------------------
# zenoh configs


def check_zenoh(root: Path) -> None:
    zdir = root / "deploy/zenoh"
    files = sorted(zdir.glob("*.json5"))
    if not R.check(bool(files), "deploy/zenoh: configs present"):
        return
    confs = {}
    for f in files:
        try:
            confs[f.stem] = json5.loads(f.read_text())
        except ValueError as e:
            R.fail(f"deploy/zenoh/{f.name}: does not parse: {e}")
    for stem, c in confs.items():
        scouting = c.get("scouting", {})
        link = c.get("transport", {}).get("link", {})
        tls = link.get("tls", {})
        R.check(scouting.get("multicast", {}).get("enabled") is False,
                f"deploy/zenoh/{stem}.json5: multicast scouting off")
        R.check(link.get("protocols") == ["tls"] and tls.get("enable_mtls") is True
                and tls.get("verify_name_on_connect") is True,
                f"deploy/zenoh/{stem}.json5: TLS only, mutual TLS, name verified")
        R.check(link.get("tx", {}).get("lease") == 2000, f"deploy/zenoh/{stem}.json5: 2 s lease")
    routers = {s.removeprefix("router-"): c for s, c in confs.items() if s.startswith("router-")}
    directed = []
    for region, c in routers.items():
        listen = c.get("listen", {}).get("endpoints", [])
        eps = c.get("connect", {}).get("endpoints", [])
        bad = []
        for ep in eps:
            m = re.fullmatch(r"tls/zenoh-([a-z0-9-]+)\.mesh\.example\.com:7447", ep)
            if not m or m.group(1) not in routers or m.group(1) == region:
                bad.append(ep)
            else:
                directed.append((region, m.group(1)))
        ok = (c.get("mode") == "router" and c.get("metadata", {}).get("region") == region
              and listen == ["tls/0.0.0.0:7447"])
        R.check(ok and not bad, f"deploy/zenoh/router-{region}.json5: router of {region}, listens tls/0.0.0.0:7447, "
                                f"dials {[e.split('/')[1] for e in eps] or 'nobody'}",
                f"bad endpoints {bad}" if bad else "mode, metadata.region or listen wrong")
    pairs = {frozenset((a, b)) for a in routers for b in routers if a < b}
    links = [frozenset(d) for d in directed]
    twice = sorted(sorted(p) for p in pairs if links.count(p) > 1)
    missing = sorted(sorted(p) for p in pairs if p not in links)
    R.check(not twice and not missing,
            f"deploy/zenoh: routers {sorted(routers)} form a full mesh, each link dialled by one side",
            f"not linked {missing}, dialled from both sides {twice}")
    node = confs.get("node")
    if R.check(node is not None, "deploy/zenoh/node.json5 present"):
        R.check(node.get("mode") == "peer" and node.get("scouting", {}).get("gossip", {}).get("enabled") is False
                and node.get("listen", {}).get("endpoints") == [] and node.get("connect", {}).get("timeout_ms") == -1,
                "deploy/zenoh/node.json5: peer, gossip off, listens nowhere, dials in the background")
    check_acls(root)
    zenoh_parser(root, files)


ACL_MESSAGES = {"put", "delete", "declare_subscriber", "query", "reply", "declare_queryable",
                "liveliness_token", "declare_liveliness_subscriber", "liveliness_query"}
# The node key space: `**` never matches the verbatim @node/@member/@presence/@disconnect/@live/@console chunks.
MESH_KEYS = {"prscd/**", "prscd/*/@node/*", "prscd/*/*/@member/*", "prscd/@presence/*/*", "prscd/@disconnect/*/*", "prscd/@live/*", "prscd/@console/*"}


def check_acls(root: Path) -> None:
    """Every shipped zenoh config (deploy/zenoh, which the Kubernetes and
    Terraform templates embed verbatim, and mesh/regions) trusts no one by
    default (issue #24): ACL on, default deny, policies naming rules and
    subjects that exist, no rule allowing outside the prscd key space, and
    a backend's rules within its apps' keys, never a token, queryable or
    reply of its own."""
    files = (sorted((root / "deploy/zenoh").glob("*.json5")) + sorted((root / "mesh/regions").rglob("*.json5"))
             + sorted((root / "mesh/p2p/tls").glob("*.json5")))
    for f in files:
        rel = f.relative_to(root)
        try:
            c = json5.loads(f.read_text())
        except ValueError as e:
            R.fail(f"{rel}: does not parse: {e}")
            continue
        acl = c.get("access_control", {})
        if not R.check(acl.get("enabled") is True and acl.get("default_permission") == "deny",
                       f"{rel}: access_control on, default deny"):
            continue
        rules = {r.get("id"): r for r in acl.get("rules", [])}
        subjects = {s.get("id"): s for s in acl.get("subjects", [])}
        policies = acl.get("policies", [])
        bad = [p for p in policies
               if not p.get("rules") or not p.get("subjects")
               or any(r not in rules for r in p["rules"]) or any(s not in subjects for s in p["subjects"])]
        R.check(bool(policies) and not bad, f"{rel}: {len(policies)} ACL policies name existing rules and subjects",
                f"dangling {bad}")
        problems = []
        for rid, r in rules.items():
            keys = r.get("key_exprs", [])
            if r.get("permission") != "allow" or not set(r.get("messages", [])) <= ACL_MESSAGES:
                problems.append(f"{rid}: permission/messages")
            if any(not k.startswith("prscd/") for k in keys):
                problems.append(f"{rid}: keys outside prscd/: {keys}")
            if str(rid).startswith("backend-"):
                if set(keys) & MESH_KEYS:
                    problems.append(f"{rid}: a backend with the node key space")
                ingress = "ingress" in r.get("flows", [])
                if ingress and set(r["messages"]) & {"liveliness_token", "declare_queryable", "reply", "delete"}:
                    problems.append(f"{rid}: a backend declaring tokens or queryables, or replying")
        mesh_subjects = [s for p in policies if "mesh" in p["rules"] for s in p["subjects"]]
        anyone = [s for s in mesh_subjects if not (set(subjects[s]) - {"id"})]
        if anyone:
            problems.append(f"the node key space for any subject {anyone}")
        tls = c.get("transport", {}).get("link", {}).get("tls", {}).get("enable_mtls") is True
        if tls and any("cert_common_names" not in subjects[s] for s in subjects):
            problems.append("a subject without cert_common_names on an mTLS config")
        R.check(not problems, f"{rel}: ACL rules stay in the prscd key space, backends in their apps", "; ".join(problems))


def zenoh_parser(root: Path, files: list[Path]) -> None:
    tools = Path(os.environ.get("PRSCD_TOOLS", Path.home() / ".cache/prscd-tools"))
    py = tools / "venv/bin/python"
    if not py.exists():
        R.note(f"{py} missing (mesh/install-python.sh): configs not loaded with zenoh's own parser")
        return
    code = ("import sys, zenoh\n"
            "for f in sys.argv[1:]:\n"
            "    zenoh.Config.from_file(f)\n"
            "    print(f)\n")
    r = run([str(py), "-c", code, *map(str, files)])
    R.check(r.returncode == 0, f"deploy/zenoh: {len(files)} configs load with zenoh 1.10.2's parser (eclipse-zenoh)",
            (r.stderr.strip().splitlines() or [""])[-1])


# ----------------------------------------------------------------------------
# Dockerfile


def check_dockerfile(root: Path) -> None:
    path = root / "Dockerfile"
    if not R.check(path.is_file(), "Dockerfile present"):
        return
    instructions = []
    cur = ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") and not cur:
            continue
        cur += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            if cur.strip():
                op, _, rest = cur.strip().partition(" ")
                instructions.append((op.upper(), rest.strip()))
            cur = ""
    stages = [i for i, (op, _) in enumerate(instructions) if op == "FROM"]
    R.check(len(stages) >= 2, f"Dockerfile: multi-stage ({len(stages)} stages)")
    final = instructions[stages[-1]:] if stages else instructions
    users = [rest for op, rest in final if op == "USER"]
    user = users[-1].split(":")[0] if users else "root"
    R.check(user not in ("root", "0", ""), f"Dockerfile: final stage runs as USER {user}")
    R.check(any(op == "HEALTHCHECK" and "CMD" in rest for op, rest in final), "Dockerfile: HEALTHCHECK")
    exposed = " ".join(rest for op, rest in final if op == "EXPOSE").split()
    env = " ".join(rest for op, rest in final if op == "ENV")
    m = re.search(r"\bPORT=(\d+)", env)
    port = m.group(1) if m else "8443"
    R.check(f"{port}/tcp" in exposed and f"{port}/udp" in exposed,
            f"Dockerfile: EXPOSE {port}/tcp and {port}/udp (PORT={port})", f"EXPOSE {exposed}")
    R.check(any(op == "STOPSIGNAL" and rest == "SIGTERM" for op, rest in final), "Dockerfile: STOPSIGNAL SIGTERM")
    R.check(any(op == "ENTRYPOINT" and "prscd" in rest for op, rest in final), "Dockerfile: ENTRYPOINT prscd")
    copies = [rest for op, rest in instructions if op == "COPY" and "--from" not in rest]
    text = path.read_text()
    manifest = tomllib.loads((root / "Cargo.toml").read_text())
    R.check(re.search(r"cargo build [^\n]*-p prscd\b", text) is not None,
            "Dockerfile: builds the node alone (cargo build -p prscd)")
    R.check(re.search(r"--mount=type=cache,target=\S*/target\b", text) is not None,
            "Dockerfile: compiled dependencies kept in a cache mount of target/")
    members = [m for m in manifest.get("workspace", {}).get("members", []) if m != "."]
    uncopied = [m for m in members if not any(m == c or m.startswith(c.split()[0].rstrip("/") + "/") for c in copies)]
    R.check(not uncopied, "Dockerfile: copies every workspace member (cargo reads their manifests)",
            f"not copied: {uncopied}")
    if (root / "build.rs").exists() or manifest.get("package", {}).get("build"):
        R.check("build.rs" in text, "Dockerfile: copies build.rs")
    ignore = root / ".dockerignore"
    if R.check(ignore.is_file(), ".dockerignore present"):
        lines = [ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
        allowed = [ln[1:].rstrip("/") for ln in lines if ln.startswith("!")]
        whitelist = lines and lines[0] == "*"
        R.check(whitelist or ("target" in lines and ".git" in lines),
                ".dockerignore keeps target/ and .git out of the build context")
        needed = []
        for c in copies:
            parts = [p for p in c.split() if not p.startswith("--")][:-1]
            needed += parts
        missing = [p for p in needed if not (root / p).exists()]
        hidden = [p for p in needed if whitelist and not any(p == a or p.startswith(a + "/") for a in allowed)]
        R.check(not missing and not hidden, f"Dockerfile: COPY sources exist and pass .dockerignore ({', '.join(needed)})",
                "; ".join(filter(None, [missing and f"missing {missing}", hidden and f"ignored {hidden}"])))


# ----------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parent.parent),
                    help="repository root (default: this file's parent's parent)")
    args = ap.parse_args()
    root = Path(args.root).resolve()
    drain = drain_bound(root)
    R.note(f"node drain (src/): DRAIN_GRACE_MS {drain['grace_ms']}, DRAIN_TIMEOUT_MS {drain['timeout_ms']}, "
           f"then {drain['tail_s']:g} s closing QUIC and zenoh")
    for section, fn in (("Dockerfile", lambda: check_dockerfile(root)),
                        ("terraform", lambda: check_terraform(root)),
                        ("kubernetes", lambda: check_k8s(root, drain)),
                        ("systemd", lambda: check_systemd(root, drain)),
                        ("zenoh", lambda: check_zenoh(root))):
        print(f"-- {section}", flush=True)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a crash in one section is that section's failure
            R.fail(f"{section}: checker crashed: {type(e).__name__}: {e}")
    print(f"-- {R.passed} passed, {R.failed} failed", flush=True)
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
