/* Program support on Linux (stdio files, exit status): the same API as the firmware's
 * semihosting harness, so the firmware's test main runs here unchanged. */
#include <stdio.h>
#include <stdlib.h>
#include "harness.h"

#define PAINT 0xA5A5A5A5u
#define PAINT_WORDS (256u * 1024u / 4u)  /* the stack below main watched for the high-water mark */

static volatile uint32_t* paint_top;

int edlc_read_file(const char* path, void* buf, uint32_t size) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) return -1;
  size_t got = fread(buf, 1, size, f);
  int extra = fgetc(f);  /* a longer file is the wrong input too */
  fclose(f);
  return got == size && extra == EOF ? 0 : -1;
}

int edlc_write_file(const char* path, const void* buf, uint32_t size) {
  FILE* f = fopen(path, "wb");
  if (f == NULL) return -1;
  size_t put = fwrite(buf, 1, size, f);
  return fclose(f) == 0 && put == size ? 0 : -1;
}

void edlc_puts(const char* s) { fputs(s, stdout); fflush(stdout); }

void edlc_put_u32(const char* label, uint32_t value) { printf("%s=%u ", label, value); }

void edlc_exit(int code) { exit(code); }

/* Paint the stack below this frame, then find the deepest word the inference overwrote. */
__attribute__((noinline)) void edlc_stack_paint(void) {
  volatile uint32_t* top = (volatile uint32_t*)__builtin_frame_address(0) - 64;
  for (uint32_t i = 1; i <= PAINT_WORDS; i++) top[-(long)i] = PAINT;
  paint_top = top;
}

uint32_t edlc_stack_used(void) {
  uint32_t i = PAINT_WORDS;
  while (i > 0 && paint_top[-(long)i] == PAINT) i--;
  return i * 4u;
}

__attribute__((noinline, used)) void edlc_mark_begin(void) { __asm__ volatile("" ::: "memory"); }
__attribute__((noinline, used)) void edlc_mark_end(void) { __asm__ volatile("" ::: "memory"); }
