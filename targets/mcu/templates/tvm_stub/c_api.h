/* The few TVM FFI / DLPack declarations TVM's C kernels use, for building them without the
 * TVM runtime (layouts as in tvm-ffi's c_api.h and dlpack.h). */
#ifndef EDLC_TVM_STUB_H
#define EDLC_TVM_STUB_H
#include <stdint.h>
#include <stddef.h>
#ifndef TVM_DLL
#define TVM_DLL
#endif
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} DLTensor;
typedef struct {
  int32_t type_index;
  uint32_t zero_padding;
  union { int64_t v_int64; double v_float64; void* v_ptr; } ;
} TVMFFIAny;
void* TVMBackendAllocWorkspace(int device_type, int device_id, uint64_t nbytes,
                               int dtype_code_hint, int dtype_bits_hint);
int TVMBackendFreeWorkspace(int device_type, int device_id, void* ptr);
#endif
