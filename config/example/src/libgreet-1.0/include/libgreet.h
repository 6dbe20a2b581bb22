/* libgreet: greetings on top of libformat. Its ABI (soname major) is GREET_ABI. */
#ifndef LIBGREET_H
#define LIBGREET_H

int greet_abi(void);                        /* the soname major this library was built with */
char *greet_message(const char *who);       /* "Hello from <who> (libgreet N)"; free() it */

#endif
