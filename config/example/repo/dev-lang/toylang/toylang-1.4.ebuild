# Copyright 2024 swarmnode authors
# Distributed under the terms of the MIT license

EAPI=8

DESCRIPTION="Tiny RPN language, old series (slot 1, installs toylang1)"
HOMEPAGE="https://example.invalid/swarmnode"
SRC_URI="${P}.tar.gz"

LICENSE="MIT"
SLOT="1"
KEYWORDS="amd64"
RESTRICT="mirror"

src_compile() {
	emake CC="${CC:-gcc}"
}

src_install() {
	emake DESTDIR="${D}" PREFIX="${EPREFIX}/usr" install
}
