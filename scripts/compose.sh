#!/usr/bin/env bash
# `docker compose` for docker-compose.yml (Compose 2, or docker-compose 1.29 where that is what is
# installed), after the checks that turn the usual mistakes into one line that says what to do:
# no Docker engine, no panel token, the panel's host port taken, no base image to build from.
#
#   scripts/compose.sh up --build        # the simulated dry run (any docker compose arguments)
#   scripts/compose.sh down              # ...
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "compose.sh: $*" >&2; exit 1; }

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    die "neither 'docker compose' (Compose 2) nor docker-compose (1.29+) is installed: install one (Debian: apt-get install docker-compose)"
fi
docker info >/dev/null 2>&1 ||
    die "no Docker engine answers (docker info failed): start it (systemctl start docker, or dockerd &) or check DOCKER_HOST and your access to its socket, then run this again"

command=""
for arg in "$@"; do  # the compose command: the first word that is not an option or an option's value
    case "$arg" in
        up|run|create|start|restart|build) command=$arg; break ;;
    esac
done

if [ "$command" = build ]; then  # images hold no token, but Compose reads every variable of the file
    export ROBOT_SQL_PANEL_TOKEN=${ROBOT_SQL_PANEL_TOKEN:-not-needed-to-build}
elif [ -n "$command" ]; then
    token=${ROBOT_SQL_PANEL_TOKEN:-}
    [ -n "$token" ] || die "ROBOT_SQL_PANEL_TOKEN is not set: export ROBOT_SQL_PANEL_TOKEN=\$(openssl rand -hex 24), then run this again"
    [ ${#token} -ge 32 ] || die "ROBOT_SQL_PANEL_TOKEN is too short (${#token} characters, the panel needs 32 or more): export ROBOT_SQL_PANEL_TOKEN=\$(openssl rand -hex 24)"
fi

if [ "$command" = up ] || [ "$command" = build ]; then
    base=${ROBOT_SQL_BASE_IMAGE:-robot-sql-base:bookworm}
    if [ "$command" = build ] || [[ " $* " == *" --build "* ]] || ! docker image inspect robot-sql-learner >/dev/null 2>&1; then
        docker image inspect "$base" >/dev/null 2>&1 || die "no base image $base to build from: run scripts/images.sh first (it makes the base image and the wheelhouse)"
        [ -f deploy/wheels/requirements.txt ] || die "no wheelhouse in deploy/wheels: run scripts/images.sh first"
    fi
fi

if [ "$command" = up ]; then
    port=${ROBOT_SQL_PANEL_PORT:-8765}
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then  # something listens there
        holders=$(docker ps --filter "publish=$port" --format '{{.Label "com.docker.compose.service"}} {{.Label "com.docker.compose.project.working_dir"}}')
        [ "$holders" = "panel $PWD" ] ||  # else it is this checkout's own panel, which `up` leaves or replaces
            die "127.0.0.1:$port, the panel's port, is taken by another program (ss -ltnp 'sport = :$port' names it): stop that, or pick another port: ROBOT_SQL_PANEL_PORT=8766 scripts/compose.sh $*"
    fi
fi

exec "${compose[@]}" "$@"
