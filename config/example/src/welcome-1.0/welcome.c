/* welcome: a second program linked against libgreet (rebuilt on a sub-slot bump). */
#include <stdio.h>
#include <libgreet.h>

int main(void)
{
	printf("Welcome aboard (libgreet %d)\n", greet_abi());
	return 0;
}
