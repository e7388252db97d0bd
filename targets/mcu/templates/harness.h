/* Test-firmware support: semihosting file I/O and exit, stack high-water mark.
 * Used by the test firmware only; the model library itself needs none of it. */
#ifndef EDLC_HARNESS_H
#define EDLC_HARNESS_H
#include <stdint.h>

int edlc_read_file(const char* path, void* buf, uint32_t size);         /* 0 on success */
int edlc_write_file(const char* path, const void* buf, uint32_t size);  /* 0 on success */
void edlc_puts(const char* s);
void edlc_put_u32(const char* label, uint32_t value);                    /* "label=value " */
void edlc_exit(int code) __attribute__((noreturn));
void edlc_stack_paint(void);
uint32_t edlc_stack_used(void);                 /* bytes below the stack top ever written */
void edlc_mark_begin(void);                     /* the instruction-count plugin watches these */
void edlc_mark_end(void);

#endif
