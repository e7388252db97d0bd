#!/usr/bin/env bash
# Installs what edlc needs on a fresh Debian machine: system packages, then edlc with its
# test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v gcc >/dev/null || need_apt+=(gcc)
command -v g++ >/dev/null || need_apt+=(g++)
# target arm: cross compilers, and user-mode QEMU (with Debian's aarch64 libc) to run the builds
command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu)
command -v aarch64-linux-gnu-g++ >/dev/null || need_apt+=(g++-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need_apt+=(qemu-user)
# microcontroller targets (cortex-m*, c): the bare-metal cross compiler with newlib, and
# system-mode QEMU (MPS2/MPS3 boards) to run the test firmware
command -v arm-none-eabi-gcc >/dev/null || need_apt+=(gcc-arm-none-eabi)
[ -f /usr/lib/arm-none-eabi/newlib/libc.a ] || need_apt+=(libnewlib-arm-none-eabi)
command -v qemu-system-arm >/dev/null || need_apt+=(qemu-system-arm)
command -v make >/dev/null || need_apt+=(make)
if [ ${#need_apt[@]} -gt 0 ]; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi

python3 -m pip install -q --upgrade pip
python3 -m pip install -q -e '.[test]'

# target arm: the aarch64 TVM runtime (from PyPI's aarch64 wheels) and the board's run-model
# program, cached in ~/.cache/edlc/aarch64 so arm builds work offline later
python3 -m edlc.targets.arm_runtime
