/* A fan of app-misc/broken: it can never be built while broken fails. */
#include <stdio.h>

int main(void)
{
	puts("broken-fan: app-misc/broken works after all");
	return 0;
}
