#!/usr/bin/env bash
# test_container.sh SOURCE_ROOT: builds docker/Dockerfile and gets a PNG from
# the image's server, on a machine without a Docker engine.
#
# 1. A minimal bookworm root from Debian's own packages (debootstrap
#    --variant=minbase, from the mirror apt uses here, read from
#    /etc/apt/sources.list* now), cached as a tarball under
#    $DITMOE_CI_CACHE (/var/cache/ditmoe-ci) keyed by date and mirror.
# 2. That root imported as docker.io/library/debian:bookworm and :bookworm-slim
#    into a buildah store of the test's own (under the cache folder, so the
#    machine's own images are never touched and layers are reused next time).
# 3. buildah bud --isolation chroot --pull=never of docker/Dockerfile (the
#    apt-get steps inside reach the same mirror).
# 4. buildah run --isolation chroot of the image (host network: the server
#    listens on 127.0.0.1 only): not root inside, the healthcheck passes,
#    /ready, and POST /generate answers a PNG. The model is the bundled
#    models/fashion-mnist when the tree has it, else a random one mounted at
#    /models (DITMOE_MODEL=/models/test), which exercises the volume.
# Needs root, buildah, debootstrap and curl; exits 77 (skipped) otherwise.
set -euo pipefail

src=$(cd "${1:?usage: test_container.sh SOURCE_ROOT}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap; buildah with chroot isolation)"
for t in buildah debootstrap curl flock pgrep; do
  command -v "$t" >/dev/null || skip "$t is not installed (scripts/install-deps --test)"
done
t0=$SECONDS
log() { printf '[%4ds] %s\n' $((SECONDS - t0)) "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# The first Debian archive apt here uses for bookworm (deb822 .sources and
# one-line .list files; security and other suites are not it).
debian_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
      { types = ""; uris = ""; suites = ""; enabled = "yes"
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^#/) continue
          key = tolower(line); sub(/:.*/, "", key)
          val = line; sub(/^[^:]*:[ \t]*/, "", val)
          if (key == "types") types = val
          else if (key == "uris") uris = val
          else if (key == "suites") suites = val
          else if (key == "enabled") enabled = tolower(val)
        }
        if (enabled != "no" && (" " types " ") ~ / deb / && (" " suites " ") ~ / bookworm /) {
          split(uris, u, /[ \t]+/); print u[1]; exit
        } }' "$f"
  done
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
    sed -e 's/#.*//' -e 's/\[[^]]*\]//' |
    awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' || true
}

mirror=$(debian_mirror | head -n 1 || true)
[ -n "$mirror" ] || skip "no bookworm archive in /etc/apt/sources.list*"
cache=${DITMOE_CI_CACHE:-/var/cache/ditmoe-ci}
mkdir -p "$cache/rootfs"
# One run at a time per cache (the store and the tarball are shared).
exec 9>"$cache/lock"
flock -w 1800 9 || fail "$cache/lock is held by another run"

key="$(date -u +%Y%m%d)-$(printf %s "$mirror" | sha256sum | cut -c1-12)"
rootfs="$cache/rootfs/bookworm-minbase-$key.tar.gz"
work=$(mktemp -d /tmp/ditmoe-container.XXXXXX)
chmod 755 "$work"
server_pid=""
ctr=""
# The pid of the process named $2 among $1 and its descendants.
descendant() {
  local queue=("$1") p
  while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]}
    queue=("${queue[@]:1}")
    if [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$2" ]; then echo "$p"; return; fi
    # shellcheck disable=SC2207
    queue+=($(pgrep -P "$p" || true))
  done
}
cleanup() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    spid=$(descendant "$server_pid" ditmoe-server)
    [ -z "$spid" ] || kill -TERM "$spid" 2>/dev/null || true
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
  [ -z "$ctr" ] || buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# ---- 1. the base root ---------------------------------------------------------
if [ -s "$rootfs" ]; then
  log "base root: cached $rootfs"
else
  log "base root: debootstrap --variant=minbase bookworm from $mirror"
  debootstrap --variant=minbase bookworm "$work/root" "$mirror" > "$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log"; fail "debootstrap"; }
  # like the official images: no package lists or downloaded .debs
  rm -rf "$work/root/var/lib/apt/lists/"* "$work/root/var/cache/apt/"*.bin
  find "$work/root/var/cache/apt/archives" -name '*.deb' -delete
  tar -C "$work/root" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
      -czf "$rootfs.tmp" .
  mv "$rootfs.tmp" "$rootfs"
  rm -rf "$work/root"
  find "$cache/rootfs" -name 'bookworm-minbase-*.tar.gz' ! -name "$(basename "$rootfs")" -delete
  log "base root: $(du -h "$rootfs" | cut -f1) cached"
fi

# ---- 2. a buildah store of our own, with the base images ----------------------
driver=vfs
if grep -qw overlay /proc/filesystems && [ "$(stat -f -c %T "$cache")" != overlayfs ]; then
  driver=overlay
fi
mkdir -p "$cache/storage-$driver" /run/ditmoe-ci
cat > "$work/storage.conf" <<EOF
[storage]
driver = "$driver"
graphroot = "$cache/storage-$driver"
runroot = "/run/ditmoe-ci/storage-$driver"
EOF
cat > "$work/registries.conf" <<'EOF'
unqualified-search-registries = ["docker.io"]
short-name-mode = "permissive"
EOF
export CONTAINERS_STORAGE_CONF="$work/storage.conf" CONTAINERS_REGISTRIES_CONF="$work/registries.conf"
export BUILDAH_ISOLATION=chroot

base_key() {
  buildah inspect --type image --format '{{index .OCIv1.Config.Labels "org.ditmoe.ci.rootfs"}}' "$1" 2>/dev/null || true
}
if [ "$(base_key docker.io/library/debian:bookworm)" = "$key" ] &&
   [ "$(base_key docker.io/library/debian:bookworm-slim)" = "$key" ]; then
  log "base images: already imported ($key)"
else
  log "base images: importing the root as debian:bookworm and debian:bookworm-slim ($driver store)"
  c=$(buildah from scratch)
  buildah add --quiet "$c" "$rootfs" / >/dev/null
  buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --cmd /bin/bash --label "org.ditmoe.ci.rootfs=$key" "$c"
  buildah commit --quiet --rm "$c" docker.io/library/debian:bookworm >/dev/null
  buildah tag docker.io/library/debian:bookworm docker.io/library/debian:bookworm-slim
fi

# ---- 3. the build -------------------------------------------------------------
log "build: buildah bud docker/Dockerfile"
# --format docker: as `docker build` makes it (OCI image configs have no HEALTHCHECK)
if ! buildah bud --isolation chroot --pull=never --layers --network host --format docker \
      -f "$src/docker/Dockerfile" -t localhost/ditmoe:ci "$src" > "$work/build.log" 2>&1; then
  tail -n 60 "$work/build.log"
  fail "buildah bud"
fi
grep -E 'STEP [0-9]|COMMIT|Using cache' "$work/build.log" | cut -c1-150 || true
# Old builds of the tag are dangling now; their layers are no use.
buildah rmi --prune >/dev/null 2>&1 || true
log "build: done"

# ---- 4. run the image ---------------------------------------------------------
cfg=$(buildah inspect --type image --format \
    '{{.Docker.Config.User}} {{.Docker.Config.Entrypoint}} {{.Docker.Config.Cmd}} {{.Docker.Config.Healthcheck.Test}}' \
    localhost/ditmoe:ci)
[ "$cfg" = "10001:10001 [/usr/bin/ditmoe-server] [--listen 0.0.0.0] [CMD /usr/bin/ditmoe-server --healthcheck]" ] ||
  fail "image config (user, entrypoint, cmd, healthcheck): $cfg"

model_env=()
volume=()
if [ ! -f "$src/models/fashion-mnist/config.json" ]; then
  mkdir -p "$work/models"
  /usr/bin/python3 "$here/make_model.py" "$work/models/test" > "$work/model.log" 2>&1 ||
    { tail -n 20 "$work/model.log"; skip "no models/fashion-mnist and no PyTorch to make a model"; }
  chmod -R a+rX "$work/models"
  volume=(--volume "$work/models:/models:ro")
  model_env=(--env DITMOE_MODEL=/models/test)
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
ctr=$(buildah from --pull=never localhost/ditmoe:ci)

uid=$(buildah run --isolation chroot "$ctr" -- id -u)
[ "$uid" != 0 ] || fail "the image runs as root"
log "run: as uid $uid; server on 127.0.0.1:$port"
buildah run --isolation chroot --network host "${volume[@]}" "${model_env[@]}" --env "DITMOE_PORT=$port" \
    "$ctr" -- /usr/bin/ditmoe-server --listen 127.0.0.1 > "$work/server.log" 2>&1 &
server_pid=$!

ready=0
for _ in $(seq 600); do
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; fail "the server exited"; }
  if curl -fsS -m 2 "http://127.0.0.1:$port/ready" >/dev/null 2>&1; then ready=1; break; fi
  sleep 0.2
done
[ $ready = 1 ] || { cat "$work/server.log"; fail "/ready not 200 within 120 s"; }

buildah run --isolation chroot --network host --env "DITMOE_PORT=$port" "$ctr" -- /usr/bin/ditmoe-server --healthcheck ||
  fail "the image's healthcheck failed against a running server"
free=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if buildah run --isolation chroot --network host --env "DITMOE_PORT=$free" "$ctr" -- /usr/bin/ditmoe-server --healthcheck 2>/dev/null; then
  fail "the image's healthcheck passed with no server on port $free"
fi
for f in web/index.html models imagenet_classes.txt; do
  buildah run --isolation chroot "$ctr" -- test -e "/usr/share/ditmoe/$f" || fail "no /usr/share/ditmoe/$f in the image"
done

code=$(curl -sS -m 120 -o "$work/out.png" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -d '{"class_label": 1, "seed": 7, "steps": 8}' "http://127.0.0.1:$port/generate")
[ "$code" = 200 ] || { cat "$work/out.png"; cat "$work/server.log"; fail "POST /generate: $code"; }
[ "$(head -c 8 "$work/out.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] ||
  fail "POST /generate: not a PNG"
log "POST /generate from the image's server: $(stat -c %s "$work/out.png") byte PNG"
if [ -f "$src/web/index.html" ]; then
  curl -fsS -m 10 "http://127.0.0.1:$port/" -o /dev/null || fail "GET / (the demo page) failed"
fi

# SIGTERM to the server itself (buildah run does not forward signals): it
# drains, exits 0, and buildah run with it.
spid=$(descendant "$server_pid" ditmoe-server)
[ -n "$spid" ] || fail "no ditmoe-server process under buildah run ($server_pid)"
kill -TERM "$spid"
rc=0
wait "$server_pid" || rc=$?
server_pid=""
[ $rc = 0 ] || { tail -n 20 "$work/server.log"; fail "exit status $rc after SIGTERM to the server"; }
grep -q "ditmoe-server: stopped" "$work/server.log" || fail "the server did not log its clean stop"
log "ok: image $(buildah images --format '{{.Size}}' localhost/ditmoe:ci), server stopped cleanly"
