#!/usr/bin/env bash
# Build the images of docker-compose.yml (learner, panel, ros) from deploy/Dockerfile, online or
# without any registry. Nothing is downloaded during the build itself: this script prepares it.
#
#   scripts/images.sh           base, wheels, build (each step skipped when its result is there)
#   scripts/images.sh base      the base image robot-sql-base:bookworm: debian:bookworm-slim pulled
#                               and tagged where a registry answers, else made with debootstrap
#                               (root, `apt-get install debootstrap`) from a Debian mirror
#   scripts/images.sh wheels    the wheelhouse deploy/wheels/: every wheel the images install,
#                               made by `pip wheel` on this machine (needs Python 3.11 on Linux x86_64,
#                               the images' Python; PYTHON=/path/to/python3.11 to choose one)
#   scripts/images.sh build     docker compose build (then `docker compose up` needs no download)
#   scripts/images.sh sizes     the images' sizes
#
# Environment:
#   ROBOT_SQL_BASE_IMAGE  base image name (default robot-sql-base:bookworm; docker-compose.yml reads it too)
#   DEBIAN_MIRROR         mirror for debootstrap (default: the first Debian one in this machine's apt sources)
#   TORCH_VERSION         default 2.13.0; TORCH_INDEX_URL an extra index for torch, e.g.
#                         https://download.pytorch.org/whl/cpu for CPU-only images (PyPI's torch
#                         for Linux is the CUDA build: the GPU learner needs it, the images are ~3 GB bigger)
#   ROBOT_SQL_CACHE       where the debootstrap tarball and the last wheelhouse are kept between runs and
#                         checkouts (default ~/.cache/robot-sql; never in git)
# An air-gapped machine: run `scripts/images.sh base wheels` on a connected one of the same kind,
# carry deploy/wheels/ and `docker save robot-sql-base:bookworm` over, `docker load` it, then
# `scripts/images.sh build` (README, "Containers").
set -euo pipefail
cd "$(dirname "$0")/.."

BASE_IMAGE=${ROBOT_SQL_BASE_IMAGE:-robot-sql-base:bookworm}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
WHEELS=deploy/wheels
CACHE=${ROBOT_SQL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/robot-sql}
export ROBOT_SQL_BASE_IMAGE=$BASE_IMAGE
TEMPORARY=()
trap 'rm -rf "${TEMPORARY[@]}"' EXIT

die() { echo "images.sh: $*" >&2; exit 1; }
say() { echo "images.sh: $*" >&2; }

compose() {
    if docker compose version >/dev/null 2>&1; then
        docker compose "$@"
    elif command -v docker-compose >/dev/null; then
        docker-compose "$@"
    else
        die "neither 'docker compose' (Compose 2) nor docker-compose (1.29+) is installed: install one (Debian: apt-get install docker-compose)"
    fi
}

need_engine() {
    command -v docker >/dev/null || die "docker is not installed: install Docker (Debian: apt-get install docker.io) and run this again"
    docker info >/dev/null 2>&1 || die "no Docker engine answers (docker info failed): start it (systemctl start docker, or dockerd &) or check DOCKER_HOST and your access to its socket, then run this again"
}

debian_mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    # deb822 (URIs: ...) and one-line (deb URL suite ...) sources; the first Debian archive that is not security's
    { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } |
        sed -nE 's/^URIs:[[:space:]]+//p; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//p' | awk '{print $1}' |
        grep -E '/debian/?$' | grep -v security | head -n 1 || true
}

step_base() {
    need_engine
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "base image $BASE_IMAGE is there"; return
    fi
    if [ "$BASE_IMAGE" != robot-sql-base:bookworm ]; then
        docker pull "$BASE_IMAGE" >&2 || die "cannot pull $BASE_IMAGE: load it (docker load) or unset ROBOT_SQL_BASE_IMAGE"
        return
    fi
    if docker pull debian:bookworm-slim >&2 2>/dev/null; then
        docker tag debian:bookworm-slim "$BASE_IMAGE"
        say "base image $BASE_IMAGE = debian:bookworm-slim"; return
    fi
    say "no registry answers: making $BASE_IMAGE with debootstrap (Debian bookworm, minbase)"
    local tarball="$CACHE/debian-bookworm-minbase.tar"
    if [ ! -s "$tarball" ]; then
        [ "$(id -u)" = 0 ] || die "debootstrap needs root: run 'sudo scripts/images.sh base' (or docker load a Debian bookworm image tagged $BASE_IMAGE)"
        command -v debootstrap >/dev/null || die "debootstrap is not installed: apt-get install debootstrap (or docker load a Debian bookworm image tagged $BASE_IMAGE)"
        local mirror; mirror=$(debian_mirror)
        [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources*: set DEBIAN_MIRROR=http://deb.debian.org/debian (or your lab's mirror)"
        local root; root=$(mktemp -d); TEMPORARY+=("$root" "$root.log")
        debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 ||
            { tail -n 5 "$root.log" >&2; die "debootstrap from $mirror failed (the log's end above)"; }
        rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/log/apt
        mkdir -p "$CACHE"
        tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    else
        say "using the cached $tarball"
    fi
    docker import --change 'CMD ["/bin/bash"]' "$tarball" "$BASE_IMAGE" >/dev/null
    say "base image $BASE_IMAGE made"
}

pick_python() {
    local candidates=("${PYTHON:-}" .venv/bin/python python3.11 python3)
    for python in "${candidates[@]}"; do
        [ -n "$python" ] && command -v "$python" >/dev/null || continue
        if "$python" -c 'import platform, sys; sys.exit(not (sys.version_info[:2] == (3, 11) and platform.system() == "Linux" and platform.machine() == "x86_64"))' 2>/dev/null &&
           "$python" -m pip --version >/dev/null 2>&1; then
            echo "$python"; return
        fi
    done
    die "the wheelhouse needs Python 3.11 with pip on Linux x86_64 (the images' Python, Debian bookworm's): install python3.11 or set PYTHON=/path/to/python3.11"
}

# deploy/wheels/{requirements,ros,ros-build}.txt from pyproject.toml: the project's dependencies, the
# ROS 2 run-time wheels, and the tools that build ros_ws (only the ros image's build stage has those)
write_requirements() {
    "$1" - "$2" "$TORCH_VERSION" <<'PY'
import sys, tomllib
out, torch_version = sys.argv[1], sys.argv[2]
project = tomllib.load(open("pyproject.toml", "rb"))
deps = [d for d in project["project"]["dependencies"] if not d.replace(" ", "").startswith("torch")]
setup = project["build-system"]["requires"]  # the project installs without build isolation
ros = project["project"]["optional-dependencies"]["ros"]
tools = [r for r in ros if r.startswith(("ros-ament", "ros-rosidl", "colcon"))]
files = {"requirements.txt": [f"torch=={torch_version}", *deps, *setup],
         "ros.txt": [r for r in ros if r not in tools], "ros-build.txt": tools}
for name, lines in files.items():
    with open(f"{out}/{name}", "w") as handle:
        handle.write("\n".join(lines) + "\n")
PY
}

step_wheels() {
    local python; python=$(pick_python)
    local staging; staging=$(mktemp -d); TEMPORARY+=("$staging")
    write_requirements "$python" "$staging"
    local stamp; stamp=$(cat "$staging"/*.txt <(echo "$TORCH_VERSION ${TORCH_INDEX_URL:-}") | sha256sum | cut -c1-16)
    if [ "$(cat "$WHEELS/.stamp" 2>/dev/null)" = "$stamp" ]; then
        say "wheelhouse $WHEELS is up to date ($(ls "$WHEELS"/*.whl | wc -l) wheels)"; return
    fi
    local cached="$CACHE/wheels/$stamp"
    if [ -f "$cached/.stamp" ]; then  # made before, for another checkout or before a clean
        rm -f "$WHEELS"/*.whl "$WHEELS"/*.txt "$WHEELS/.stamp"
        cp -al "$cached/." "$WHEELS/" 2>/dev/null || cp -a "$cached/." "$WHEELS/"
        say "wheelhouse $WHEELS taken from the cache $cached"; return
    fi
    say "wheelhouse: pip wheel with $python into $WHEELS (torch==$TORCH_VERSION${TORCH_INDEX_URL:+ from $TORCH_INDEX_URL})"
    mkdir -p "$WHEELS" "$staging/wheels"
    local extra=()
    [ -n "${TORCH_INDEX_URL:-}" ] && extra=(--extra-index-url "$TORCH_INDEX_URL")
    # one resolution for all three lists: the versions fit together; wheels already here are reused
    local status=0
    # wheels built here from sdists (empy) come out byte for byte the same each time (zip dates),
    # so a wheelhouse made again does not throw away the images' build cache
    SOURCE_DATE_EPOCH=315532800 "$python" -m pip wheel --quiet --wheel-dir "$staging/wheels" --find-links "$WHEELS" "${extra[@]}" \
        -r "$staging/requirements.txt" -r "$staging/ros.txt" -r "$staging/ros-build.txt" 2>&1 |
        { grep -v 'is ignored: it is neither a file nor a directory' >&2 || true; } || status=$?  # (a pip.conf's absent index folders)
    [ "$status" = 0 ] ||
        die "pip wheel failed (above): the machine needs PyPI (or your index) for this step; see README, Containers, for an air-gapped machine"
    rm -f "$WHEELS"/*.whl "$WHEELS"/*.txt
    mv "$staging"/wheels/*.whl "$staging"/*.txt "$WHEELS"/
    echo "$stamp" > "$WHEELS/.stamp"
    say "wheelhouse: $(ls "$WHEELS"/*.whl | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1)"
    rm -rf "$CACHE/wheels" && mkdir -p "$cached"  # one wheelhouse kept, the newest
    cp -al "$WHEELS/." "$cached/" 2>/dev/null || cp -a "$WHEELS/." "$cached/"
    rm -f "$cached/README.md"
}

step_build() {
    need_engine
    docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "no base image $BASE_IMAGE: run scripts/images.sh base first"
    [ -f "$WHEELS/requirements.txt" ] || die "no wheelhouse in $WHEELS: run scripts/images.sh wheels first"
    # the panel's token is not part of an image, but Compose reads every variable of the file
    ROBOT_SQL_PANEL_TOKEN=${ROBOT_SQL_PANEL_TOKEN:-not-needed-to-build} compose build >&2
    step_sizes
}

step_sizes() {
    docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E '^robot-sql-(learner|panel|ros|base):' >&2 || true
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(base wheels build)
for step in "${steps[@]}"; do
    case "$step" in
        base|wheels|build|sizes) "step_$step" ;;
        *) die "unknown step '$step': base, wheels, build, sizes (none: all but sizes)" ;;
    esac
done
