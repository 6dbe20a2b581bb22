/* report: the top of the diamond report -> {libparse, libformat} -> libcore. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libformat.h>
#include <libparse.h>

static const char *records[] = {
	"name=alpha; size=3",
	"name=beta; size=14",
	"name=gamma; size=25",
};
#define NRECORDS ((int)(sizeof(records) / sizeof(records[0])))

int main(int argc, char **argv)
{
	struct parse_field f[4];
	int total = 0, csv = argc > 1 && strcmp(argv[1], "--csv") == 0;
	char *line;

#ifndef WITH_CSV
	if (csv) {
		fputs("report: built without csv support (USE=-csv)\n", stderr);
		return 2;
	}
#endif
	if (csv)
		puts("name,size");
	for (int i = 0; i < NRECORDS; i++) {
		int n = parse_fields(records[i], f, 4);
		if (n == 2) {
			total += atoi(f[1].value);
			if (csv)
				printf("%s,%s\n", f[0].value, f[1].value);
		}
		parse_free(f, n);
	}
	if (csv)
		return 0;
	line = fmt_sprintf("report: %d records, total size %d (libparse %s, libformat %s)",
			   NRECORDS, total, parse_version(), fmt_version());
	puts(line);
	free(line);
	return 0;
}
