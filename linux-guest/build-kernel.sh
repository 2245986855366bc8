#!/usr/bin/env bash
# Builds the Linux test guest (vmlinux and bzImage) from Debian's linux-source-6.12 with
# tinyconfig + kernel/emulated-guest.config + kernel/bzimage-lz4.config (an LZ4 bzImage: XZ
# takes too long to decompress under CPL0 emulation) + kernel/zygote-emulated-guest.patch,
# into a cache outside the work tree keyed by a hash of every input:
#
#   ${ZYGOTE_CACHE:-/var/cache/zygote}/linux-6.12-<key>/{vmlinux,bzImage,config,inputs}
#
#   build-kernel.sh                  build unless cached; print the cache directory
#   build-kernel.sh --print-dir      only print the cache directory for the current inputs
#   build-kernel.sh --seed-from DIR  take vmlinux and bzImage from a kernel tree already built
#                                    from these inputs (its .config must equal the one this
#                                    script would produce) instead of building
#
# The first build takes about 13 min on 2 cores (JOBS=<n> to change -j); later runs find the
# cache. The build runs in a temporary directory beside the cache entry and is renamed into
# place, so an interrupted build leaves no half entry; a lock keeps two runs from building the
# same entry at once. Needs (./dev installs them): build-essential flex bison bc libelf-dev
# libssl-dev linux-source-6.12.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
fragment="$here/kernel/emulated-guest.config"
compression="$here/kernel/bzimage-lz4.config"
patch_file="$here/kernel/zygote-emulated-guest.patch"
source_pkg=linux-source-6.12
tarball=/usr/src/linux-source-6.12.tar.xz
cache="${ZYGOTE_CACHE:-/var/cache/zygote}"

log() { printf '[build-kernel] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

version="$(dpkg-query -W -f='${Version}' "$source_pkg" 2>/dev/null)" ||
    die "$source_pkg is not installed: run ./dev test, or apt-get install $source_pkg"
[ -n "$version" ] && [ -f "$tarball" ] ||
    die "$source_pkg is not fully installed ($tarball missing): reinstall it"
key="$({
    printf '%s %s\n' "$source_pkg" "$version"
    cat "$fragment" "$compression" "$patch_file" "$0"
} | sha256sum | cut -c1-16)"
out="$cache/linux-6.12-$key"

have_build() { [ -f "$out/vmlinux" ] && [ -f "$out/bzImage" ]; }

# Extracts and patches the source and writes its .config into "$1/linux-source-6.12".
configure() {
    log "extracting $tarball ($source_pkg $version)"
    tar -xf "$tarball" -C "$1"
    cd "$1/linux-source-6.12"
    patch -p1 --quiet <"$patch_file"
    make -s tinyconfig
    ./scripts/kconfig/merge_config.sh -m .config "$fragment" "$compression" >/dev/null
    make -s olddefconfig
    # merge_config only warns when an option does not survive; a missing one is a broken guest.
    local option
    while read -r option; do
        grep -qx -- "$option" .config || die "config option lost in olddefconfig: $option"
    done < <(grep -hE '^CONFIG_|^# CONFIG_.* is not set$' "$fragment" "$compression")
}

# Moves the finished "$1" into place as "$out", unless another run got there first.
publish() {
    printf 'source %s %s\nkey %s\n' "$source_pkg" "$version" "$key" >"$1/inputs"
    if ! mv -T "$1" "$out" 2>/dev/null; then
        have_build || die "cannot move $1 to $out"
    fi
}

case "${1:-}" in
    --print-dir)
        echo "$out"
        exit 0
        ;;
    --seed-from | "") ;;
    *)
        echo "usage: $0 [--print-dir | --seed-from <built kernel tree>]" >&2
        exit 2
        ;;
esac

mkdir -p "$cache"
exec 9>"$cache/.linux-6.12-$key.lock"
flock 9
if have_build; then
    echo "$out"
    exit 0
fi

work="$(mktemp -d "$cache/.linux-6.12-$key.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir "$work/out"
configure "$work"

if [ "${1:-}" = --seed-from ]; then
    seed="${2:?--seed-from needs the built kernel tree}"
    cmp -s .config "$seed/.config" ||
        die "$seed/.config differs from the one these inputs give: not seeding from it"
    patch -p1 -R --dry-run --quiet -d "$seed" <"$patch_file" >/dev/null ||
        die "$seed does not have $patch_file applied"
    for file in vmlinux arch/x86/boot/bzImage; do
        [ "$seed/$file" -nt "$seed/.config" ] || die "$seed/$file is missing or older than .config"
    done
    log "seeding from $seed"
    built="$seed"
else
    log "building vmlinux and bzImage (about 13 min on 2 cores the first time)"
    make -s -j"${JOBS:-$(nproc)}" vmlinux bzImage
    built="$PWD"
fi

cp .config "$work/out/config"
cp "$built/vmlinux" "$work/out/vmlinux"
cp "$built/arch/x86/boot/bzImage" "$work/out/bzImage"
publish "$work/out"
log "cached in $out"
echo "$out"
