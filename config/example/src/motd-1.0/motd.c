/* motd: prints text that dev-util/codegen embedded at build time (BDEPEND). */
#include <stdio.h>

extern const char *motd_lines[];

int main(void)
{
	for (const char **l = motd_lines; *l; l++)
		printf("motd: %s\n", *l);
	return 0;
}
