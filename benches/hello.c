/* The benchmark's native peer of hello/: prints a line and exits, or with SLEEP_SECONDS set idles that
 * long. Built static (gcc -static) into a one-file image for runc. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int main(void) {
	const char *secs = getenv("SLEEP_SECONDS");
	puts("hello from edgewasm-bench");
	fflush(stdout);
	if (secs != NULL) {
		unsigned left = (unsigned)strtoul(secs, NULL, 10);
		while (left > 0) left = sleep(left);
	}
	return 0;
}
