# Copyright 2024 swarmnode authors
# Distributed under the terms of the MIT license

EAPI=8

DESCRIPTION="Summarises records with libparse and libformat; top of the diamond"
HOMEPAGE="https://example.invalid/swarmnode"
SRC_URI="${P}.tar.gz"

LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
RESTRICT="mirror"
IUSE="csv"

DEPEND="dev-libs/libformat
	dev-libs/libparse"
RDEPEND="${DEPEND}"
# The plugins need report at run time, and report wants them: a cycle PDEPEND breaks.
PDEPEND="app-misc/report-plugins"

src_compile() {
	emake CC="${CC:-gcc}" WITH_CSV=$(usex csv 1 0)
}

src_install() {
	emake DESTDIR="${D}" PREFIX="${EPREFIX}/usr" WITH_CSV=$(usex csv 1 0) install
}
