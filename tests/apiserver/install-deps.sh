#!/usr/bin/env bash
# Installs what build.sh and run.sh need, from Debian's sid suite on the mirror
# this machine's apt sources already use, without upgrading anything else:
#   - an apt source for sid and a pin (priority 100), so sid is used only for
#     what is asked for with -t sid or pkg=version;
#   - golang-go from sid (apt-get install; stops if that would upgrade or
#     remove any installed package other than golang-*);
#   - the Go source packages that golang-k8s-apiextensions-apiserver-dev needs,
#     downloaded from sid and unpacked into a private GOPATH in the cache
#     (installing them with apt would upgrade libsystemd0/systemd and tzdata);
#   - etcd and etcdctl (etcd-server and etcd-client from sid), unpacked into
#     the cache (sid's etcd-server fails to configure on bookworm: its sysusers
#     file uses a modifier that bookworm's systemd rejects).
# Safe to run again: with unchanged package lists it only checks (about 1 s).
#
# Environment:
#   CRD_APISERVER_CACHE    sources, etcd and builds (default /var/cache/crd-apiserver)
#   CRD_APISERVER_REFRESH  1: run apt-get update even if sid's lists are present
set -euo pipefail

CACHE=${CRD_APISERVER_CACHE:-/var/cache/crd-apiserver}
SOURCES_FILE=/etc/apt/sources.list.d/debian-sid.sources
PIN_FILE=/etc/apt/preferences.d/debian-sid-pin
TOP_PACKAGE=golang-k8s-apiextensions-apiserver-dev
APT=(apt-get -q -o APT::Sandbox::User=root)

log() { printf '[install-deps] %s\n' "$*" >&2; }
die() { printf '[install-deps] error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (apt-get install)"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9

# --- 1. the mirror, read from the existing apt sources -----------------------
. /etc/os-release
codename=${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}

# Prints "URI<TAB>SIGNED_BY" for the first enabled deb source of $codename.
find_mirror() {
	local f
	for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
		[[ -f $f && $f != "$SOURCES_FILE" ]] || continue
		case $f in
		*.sources)
			awk -v want="$codename" '
				function flush() {
					if (types ~ /(^| )deb( |$)/ && enabled != "no" && (" " suites " ") ~ (" " want " ") && uri != "") {
						print uri "\t" signed; found = 1; exit
					}
					types = suites = uri = signed = enabled = ""
				}
				/^[ \t]*#/ { next }
				/^[ \t]*$/ { flush(); next }
				/^[ \t]/ { next }
				{
					key = tolower($1); sub(/:$/, "", key)
					val = $0; sub(/^[^:]*:[ \t]*/, "", val)
					if (key == "types") types = val
					else if (key == "suites") suites = val
					else if (key == "uris") { split(val, u, /[ \t]+/); uri = u[1] }
					else if (key == "signed-by") signed = val
					else if (key == "enabled") enabled = tolower(val)
				}
				END { if (!found) flush() }' "$f"
			;;
		*)
			awk -v want="$codename" '
				$1 == "deb" {
					i = 2; signed = ""
					if ($i ~ /^\[/) {
						while (i <= NF) {
							if ($i ~ /^\[?signed-by=/) { s = $i; sub(/^\[?signed-by=/, "", s); sub(/\]$/, "", s); signed = s }
							if ($i ~ /\]$/) { i++; break }
							i++
						}
					}
					if ($(i + 1) == want) { print $i "\t" signed; exit }
				}' "$f"
			;;
		esac
	done | head -n 1
}

mirror_line=$(find_mirror)
[[ -n $mirror_line ]] || die "no enabled 'deb' source for suite '$codename' in /etc/apt/sources.list{,.d}"
mirror=${mirror_line%%$'\t'*}
signed_by=${mirror_line#*$'\t'}
# An inline key block or nothing: use Debian's archive keyring.
if [[ -z $signed_by || ! -f $signed_by ]]; then
	signed_by=/usr/share/keyrings/debian-archive-keyring.gpg
fi
log "mirror for $codename: $mirror"

# --- 2. sid source + pin, package lists ---------------------------------------
changed=0
write_if_different() { # path content
	if [[ ! -f $1 ]] || [[ $(<"$1") != "$2" ]]; then
		printf '%s\n' "$2" >"$1"
		changed=1
		log "wrote $1"
	fi
}
write_if_different "$SOURCES_FILE" "# Debian sid on the same mirror as $codename, for tests/apiserver.
Types: deb
URIs: $mirror
Suites: sid
Components: main
Signed-By: $signed_by"
write_if_different "$PIN_FILE" "# sid only for what is asked for with -t sid or pkg=version (tests/apiserver).
Package: *
Pin: release n=sid
Pin-Priority: 100"

if [[ $changed == 1 || ${CRD_APISERVER_REFRESH:-0} == 1 ]] || ! compgen -G '/var/lib/apt/lists/*_dists_sid_InRelease' >/dev/null; then
	log "apt-get update"
	"${APT[@]}" update >&2
fi

# --- 3. the plan: versions to use, cached per state of sid's package lists ----
lists_stamp=$({ cat "$SOURCES_FILE" "$PIN_FILE"; stat -c '%n %s %Y' /var/lib/apt/lists/*_dists_sid_*; } |
	sha256sum | cut -c1-16)
plan=$CACHE/plan-$lists_stamp.txt
if [[ ! -f $plan ]]; then
	log "resolving $TOP_PACKAGE in sid"
	sid_version() {
		apt-cache madison "$1" | awk -F'|' '$3 ~ / sid\// { gsub(/ /, "", $2); print $2; exit }'
	}
	golang_version=$(sid_version golang-go)
	etcd_version=$(sid_version etcd-server)
	[[ -n $golang_version && -n $etcd_version ]] || die "golang-go or etcd-server not found in sid"
	# Resolve against an empty dpkg status, so the closure does not depend on
	# what this machine has installed; keep only the Go source packages.
	sources=$("${APT[@]}" install -s -t sid --no-install-recommends \
		-o Dir::State::status=/dev/null "$TOP_PACKAGE" |
		awk '$1 == "Inst" && $2 ~ /^golang-.*-dev$/ {
			ver = $3; sub(/^\(/, "", ver)
			arch = ""; if (match($0, /\[[a-z0-9-]+\]\)/)) arch = substr($0, RSTART + 1, RLENGTH - 3)
			print "source " $2 "=" ver " " arch }' | LC_ALL=C sort)
	grep -q "^source $TOP_PACKAGE=" <<<"$sources" || die "$TOP_PACKAGE not found in sid"
	awk 'NF != 3 { exit 1 }' <<<"$sources" || die "could not parse apt's plan for $TOP_PACKAGE"
	printf 'golang-go %s\netcd %s\n%s\n' "$golang_version" "$etcd_version" "$sources" >"$plan.tmp"
	mv "$plan.tmp" "$plan"
	find "$CACHE" -maxdepth 1 -name 'plan-*.txt' ! -name "${plan##*/}" -delete
fi
golang_version=$(awk '$1 == "golang-go" { print $2 }' "$plan")
etcd_version=$(awk '$1 == "etcd" { print $2 }' "$plan")
manifest=$(awk '$1 == "source" { print $2, $3 }' "$plan")

# --- 4. golang-go from sid, nothing else upgraded -----------------------------
# Reads a simulated install; prints what it would upgrade or remove, other than golang-*.
foreign_changes() {
	awk '/^Inst [^ ]+ \[/ && $2 !~ /^golang-/ { print "upgrade " $2 }
	     /^Remv / { print "remove " $2 }'
}
apt_install() { # apt-get options and packages
	local sim bad
	sim=$("${APT[@]}" install -s --no-install-recommends "$@")
	bad=$(foreign_changes <<<"$sim")
	[[ -z $bad ]] || die "installing $* would change installed packages:
$bad"
	if grep -q '^Inst ' <<<"$sim"; then
		log "apt-get install $*"
		DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y --no-install-recommends "$@" >&2
	fi
}
if [[ $(dpkg-query -W -f='${Status} ${Version}' golang-go 2>/dev/null || true) != "install ok installed $golang_version" ]]; then
	apt_install -t sid golang-go
fi
command -v curl >/dev/null || apt_install curl
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[[ $go_minor -ge 24 ]] || die "$(go env GOVERSION) is older than go1.24"
log "$(go version)"

# --- 5. Go sources, unpacked into $CACHE/gocode -------------------------------
deb_name() { # pkg=version arch
	local pkg=${1%%=*} ver=${1#*=}
	printf '%s_%s_%s.deb' "$pkg" "${ver//:/%3a}" "$2"
}
key=$(sha256sum <<<"$manifest" | cut -c1-16)
gopath_dir=$CACHE/gocode-$key
if [[ ! -f $gopath_dir/manifest.txt ]]; then
	mkdir -p "$CACHE/debs"
	missing=()
	while read -r pv arch; do
		[[ -f $CACHE/debs/$(deb_name "$pv" "$arch") ]] || missing+=("$pv")
	done <<<"$manifest"
	if ((${#missing[@]})); then
		log "downloading ${#missing[@]} Go source packages from sid"
		if ! (cd "$CACHE/debs" && "${APT[@]}" download "${missing[@]}" >&2); then
			# Stale lists name files the mirror no longer has: refresh once, start over.
			[[ -z ${CRD_APISERVER_RETRIED:-} ]] || die "download from sid failed"
			log "download failed; refreshing package lists and starting over"
			exec 9>&-
			CRD_APISERVER_REFRESH=1 CRD_APISERVER_RETRIED=1 exec "$0" "$@"
		fi
	fi
	log "unpacking $(wc -l <<<"$manifest") Go source packages"
	rm -rf "$gopath_dir.tmp"
	mkdir -p "$gopath_dir.tmp"
	while read -r pv arch; do
		dpkg-deb -x "$CACHE/debs/$(deb_name "$pv" "$arch")" "$gopath_dir.tmp"
	done <<<"$manifest"
	printf '%s\n' "$manifest" >"$gopath_dir.tmp/manifest.txt"
	mv "$gopath_dir.tmp" "$gopath_dir"
	# Keep only the current set of sources and their .debs.
	for d in "$CACHE"/gocode-*; do
		[[ $d == "$gopath_dir" || ! -d $d ]] || rm -rf "$d"
	done
	keep=$(while read -r pv arch; do deb_name "$pv" "$arch"; echo; done <<<"$manifest")
	for f in "$CACHE"/debs/*.deb; do
		grep -qxF "${f##*/}" <<<"$keep" || rm -f "$f"
	done
fi
ln -sfn "gocode-$key" "$CACHE/gocode"
log "Go sources: $CACHE/gocode ($(wc -l <"$gopath_dir/manifest.txt") packages, $(grep "^$TOP_PACKAGE=" "$gopath_dir/manifest.txt"))"

# --- 6. etcd from sid, unpacked into $CACHE/etcd -----------------------------
etcd_dir=$CACHE/etcd-$etcd_version
if [[ ! -x $etcd_dir/usr/bin/etcd ]]; then
	log "downloading etcd $etcd_version from sid"
	rm -rf "$etcd_dir.tmp"
	mkdir -p "$etcd_dir.tmp/debs"
	(cd "$etcd_dir.tmp/debs" && "${APT[@]}" download "etcd-server=$etcd_version" "etcd-client=$etcd_version" >&2)
	for f in "$etcd_dir.tmp"/debs/*.deb; do dpkg-deb -x "$f" "$etcd_dir.tmp"; done
	rm -rf "$etcd_dir.tmp/debs"
	mv "$etcd_dir.tmp" "$etcd_dir"
	for d in "$CACHE"/etcd-*; do
		[[ $d == "$etcd_dir" || ! -d $d ]] || rm -rf "$d"
	done
fi
ln -sfn "etcd-$etcd_version" "$CACHE/etcd"
"$CACHE/etcd/usr/bin/etcd" --version >/dev/null || die "the unpacked etcd does not run here"
log "etcd: $CACHE/etcd/usr/bin/etcd ($etcd_version)"
