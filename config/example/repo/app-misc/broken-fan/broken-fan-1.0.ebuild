# Copyright 2024 swarmnode authors
# Distributed under the terms of the MIT license

EAPI=8

DESCRIPTION="Depends on app-misc/broken: blocked whenever broken fails (failure paths)"
HOMEPAGE="https://example.invalid/swarmnode"
SRC_URI="${P}.tar.gz"

LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
RESTRICT="mirror"

DEPEND="app-misc/broken"
RDEPEND="${DEPEND}"

src_compile() {
	emake CC="${CC:-gcc}"
}

src_install() {
	emake DESTDIR="${D}" PREFIX="${EPREFIX}/usr" install
}
