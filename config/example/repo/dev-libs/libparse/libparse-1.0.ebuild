# Copyright 2024 swarmnode authors
# Distributed under the terms of the MIT license

EAPI=8

DESCRIPTION="Record parsing on top of libcore (right of the diamond)"
HOMEPAGE="https://example.invalid/swarmnode"
SRC_URI="${P}.tar.gz"

LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
RESTRICT="mirror"

DEPEND="dev-libs/libcore"
RDEPEND="${DEPEND}"

src_compile() {
	emake CC="${CC:-gcc}"
}

src_install() {
	emake DESTDIR="${D}" PREFIX="${EPREFIX}/usr" LIBDIR="${EPREFIX}/usr/$(get_libdir)" install
}
