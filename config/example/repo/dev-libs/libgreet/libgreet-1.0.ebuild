# Copyright 2024 swarmnode authors
# Distributed under the terms of the MIT license

EAPI=8

DESCRIPTION="Greeting library whose ABI follows its sub-slot"
HOMEPAGE="https://example.invalid/swarmnode"
# The sources are shared by every libgreet version in this repository: the soname
# major (libgreet.so.N, and the "libgreet N" its dependents print) follows the
# sub-slot.  A copy of this ebuild with SLOT="0/2" builds an ABI-incompatible
# libgreet.so.2 from the same distfile, so it needs no new Manifest entry.
SRC_URI="libgreet-1.0.tar.gz"
S="${WORKDIR}/libgreet-1.0"

LICENSE="MIT"
SLOT="0/1"
KEYWORDS="amd64"
RESTRICT="mirror"

DEPEND="dev-libs/libformat"
RDEPEND="${DEPEND}"

src_compile() {
	emake CC="${CC:-gcc}" GREET_ABI="${SLOT#*/}"
}

src_install() {
	emake DESTDIR="${D}" PREFIX="${EPREFIX}/usr" LIBDIR="${EPREFIX}/usr/$(get_libdir)" \
		GREET_ABI="${SLOT#*/}" install
}
