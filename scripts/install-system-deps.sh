#!/usr/bin/env bash
# Installs the Debian packages the tests use (chromium, for checking rendered reports) when
# they are missing. Needs root or sudo; without either it says what to install and carries on:
# the rendering tests then report themselves as skipped, never as passed.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
  echo "chromium is missing and there is no root or sudo: install Debian's 'chromium' package" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "chromium is missing and apt-get is not available: install a Chromium build by hand" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null \
  || echo "could not install chromium: the rendering tests will be skipped" >&2
exit 0
