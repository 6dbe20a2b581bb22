# Copyright 2024 swarmnode authors
# Distributed under the terms of the MIT license

EAPI=8

DESCRIPTION="Prints a greeting through libgreet; top of the 4-deep chain"
HOMEPAGE="https://example.invalid/swarmnode"
SRC_URI="${P}.tar.gz"

LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
RESTRICT="mirror"
IUSE="color"

DEPEND="dev-libs/libgreet:=
	color? ( dev-libs/libcolor )"
RDEPEND="${DEPEND}"

src_compile() {
	emake CC="${CC:-gcc}" WITH_COLOR=$(usex color 1 0)
}

src_install() {
	emake DESTDIR="${D}" PREFIX="${EPREFIX}/usr" WITH_COLOR=$(usex color 1 0) install
}
