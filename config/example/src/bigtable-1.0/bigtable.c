/* bigtable: runs functions that dev-util/codegen generated; slow to compile on purpose. */
#include <stdio.h>

int bulk_count(void);
unsigned long bulk_checksum(void);

int main(void)
{
	printf("bigtable: %d generated functions, checksum %08lx\n",
	       bulk_count(), bulk_checksum() & 0xffffffffUL);
	return 0;
}
