#!/bin/sh
# The man pages man/latentd.8, man/latent-encode.1 and man/latentd.conf.5:
# each renders with `man -l` and without one warning (groff -ww, and
# mandoc -Tlint where installed), and they stay in step with the programs:
# every option `latentd --help` and `latent-encode --help` print is in the
# page, and every key of conf/latentd.conf is in latentd.conf(5).  Skips (77)
# without man and groff (Debian: man-db, groff-base).
#   LATENTD_BUILDDIR   where the built latentd and latent-encode are (make check sets it)
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${LATENTD_BUILDDIR:-.}" && pwd)
if ! command -v man >/dev/null 2>&1 || ! command -v groff >/dev/null 2>&1; then
    echo "man-pages: no man or groff (Debian: apt-get install man-db groff-base); skipped"
    exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
fail() { echo "FAIL: $*"; status=1; }

# the page as plain text: no hyphenation and long lines, so that an option
# is never split; LC_ALL=C makes '\-' a plain '-'
render() {
    LC_ALL=C MANWIDTH=250 MANROFFOPT=-rHY=0 man -l "$1" 2>"$tmp/render.err" >"$tmp/page.txt" ||
        { fail "man -l $1 failed:"; cat "$tmp/render.err"; }
}

# options: -x or --long-name at the start of a word in the --help text
options_of() {
    "$@" --help | grep -oE '(^|[][ (,|])--?[a-zA-Z][a-zA-Z0-9-]*' | sed 's/^[][ (,|]//' | sort -u
}

for page in latentd.8 latent-encode.1 latentd.conf.5; do
    src=$top/man/$page
    [ -f "$src" ] || { fail "no $src"; continue; }
    # -ww: every warning; -z: no output, only the diagnostics
    if ! groff -man -Tutf8 -ww -z "$src" >"$tmp/groff.err" 2>&1 || [ -s "$tmp/groff.err" ]; then
        fail "groff -man -ww $page:"
        cat "$tmp/groff.err"
    fi
    if ! LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l "$src" >"$tmp/man.out" 2>"$tmp/man.err" ||
        [ -s "$tmp/man.err" ] || [ ! -s "$tmp/man.out" ]; then
        fail "man --warnings -l $page:"
        cat "$tmp/man.err"
    fi
    if command -v mandoc >/dev/null 2>&1; then
        mandoc -Tlint -Wwarning "$src" >"$tmp/lint.out" 2>&1 || { fail "mandoc -Tlint $page:"; cat "$tmp/lint.out"; }
    fi
    [ $status -eq 0 ] && echo "ok: $page renders ($(wc -l <"$tmp/man.out") lines) without warnings"
done

for prog in latentd latent-encode; do
    case $prog in latentd) page=latentd.8 ;; *) page=latent-encode.1 ;; esac
    [ -x "$build/$prog" ] || { fail "no $build/$prog"; continue; }
    render "$top/man/$page"
    n=0
    for opt in $(options_of "$build/$prog"); do
        n=$((n + 1))
        grep -qE -e "(^|[^a-zA-Z0-9-])$opt([^a-zA-Z0-9-]|\$)" "$tmp/page.txt" ||
            fail "$prog --help prints $opt, $page does not document it"
    done
    [ $n -gt 0 ] || fail "$prog --help printed no option"
    echo "checked: the $n options of $prog --help in $page"
done

# every key of the shipped config, set or commented out
render "$top/man/latentd.conf.5"
n=0
for key in $(sed -n 's/^#\{0,1\}\([a-z_][a-z_0-9]*\) *=.*/\1/p' "$top/conf/latentd.conf" | sort -u); do
    n=$((n + 1))
    grep -qE "(^|[^a-z_])$key([^a-z_]|\$)" "$tmp/page.txt" ||
        fail "conf/latentd.conf has $key, latentd.conf.5 does not document it"
done
[ $n -gt 0 ] || fail "no key found in conf/latentd.conf"
echo "checked: the $n keys of conf/latentd.conf in latentd.conf.5"
exit $status
