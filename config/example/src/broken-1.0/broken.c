/* broken: fails to compile on purpose, to exercise build failures. */
#include <stdio.h>

int main(void)
{
	printf("%s\n", greeting_that_was_never_declared);
	return 0;
}
