# Copyright 2024 swarmnode authors
# Distributed under the terms of the MIT license

EAPI=8

DESCRIPTION="Message of the day embedded into C by codegen at build time"
HOMEPAGE="https://example.invalid/swarmnode"
SRC_URI="${P}.tar.gz"

LICENSE="MIT"
SLOT="0"
KEYWORDS="amd64"
RESTRICT="mirror"

# codegen runs on the build host, from PATH.
BDEPEND="dev-util/codegen"

src_compile() {
	emake CC="${CC:-gcc}"
}

src_install() {
	emake DESTDIR="${D}" PREFIX="${EPREFIX}/usr" install
}
