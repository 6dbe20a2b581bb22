/* report-summary: installed by app-misc/report-plugins, the PDEPEND of app-misc/report. */
#include <stdio.h>
#include <stdlib.h>
#include <libformat.h>

int main(void)
{
	char *tag = fmt_tagged("report-summary: plugins for report are installed");
	puts(tag);
	free(tag);
	return 0;
}
