// Torch-side helpers shared by the C++ bindings of every backend, on the LibTorch stable ABI only
// (torch/csrc/stable + torch/headeronly, TORCH_TARGET_VERSION = 2.10): one binary loads in every
// torch >= 2.10.  No ATen/c10 header may be included next to this one (tests/test_build.py checks
// the built library for unstable symbols).  Kernels themselves stay torch-free; bindings check what
// they rely on so nothing is read or written out of bounds.
#pragma once
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cstdint>
#include <optional>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#if !defined(TORCH_TARGET_VERSION)
#error "sbops builds against the LibTorch stable ABI: compile with -DTORCH_TARGET_VERSION=0x020a000000000000"
#endif

namespace sbops {

using Tensor = torch::stable::Tensor;
using OptTensor = std::optional<Tensor>;
using ScalarType = torch::headeronly::ScalarType;
using IntArrayRef = torch::headeronly::IntHeaderOnlyArrayRef;
using Device = torch::stable::Device;

inline constexpr ScalarType kByte = ScalarType::Byte, kChar = ScalarType::Char, kShort = ScalarType::Short,
                            kInt = ScalarType::Int, kLong = ScalarType::Long, kHalf = ScalarType::Half,
                            kFloat = ScalarType::Float, kDouble = ScalarType::Double,
                            kBFloat16 = ScalarType::BFloat16, kBool = ScalarType::Bool;

// shape equality (torch 2.10/2.11's HeaderOnlyArrayRef has no operator==; 2.13's has)
inline bool same_sizes(IntArrayRef a, IntArrayRef b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return false;
  return true;
}

inline bool is_floating(ScalarType t) {
  return t == kFloat || t == kDouble || t == kHalf || t == kBFloat16 || t == ScalarType::Float8_e4m3fn ||
         t == ScalarType::Float8_e5m2 || t == ScalarType::Float8_e4m3fnuz || t == ScalarType::Float8_e5m2fnuz;
}
// integral, bool excluded (as at::isIntegralType(t, false))
inline bool is_integral(ScalarType t) {
  return t == kByte || t == kChar || t == kShort || t == kInt || t == kLong || t == ScalarType::UInt16 ||
         t == ScalarType::UInt32 || t == ScalarType::UInt64;
}

// ---- messages: formatted as c10::str formats them ([2, 3] for shapes, Float for dtypes, cuda:0) ----
namespace detail {
inline void put(std::ostream& os, IntArrayRef s) {
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
}
inline void put(std::ostream& os, const std::vector<int64_t>& v) { put(os, IntArrayRef(v)); }
inline void put(std::ostream& os, ScalarType t) { os << torch::headeronly::toString(t); }
inline void put(std::ostream& os, const Device& d) {
  os << (d.is_cuda() ? "cuda" : d.is_cpu() ? "cpu" : "device");
  if (!d.is_cpu() && d.index() >= 0) os << ':' << static_cast<int>(d.index());
}
template <class T>
void put(std::ostream& os, const T& v) {
  os << v;
}
}  // namespace detail

template <class... A>
std::string str(const A&... a) {
  std::ostringstream os;
  (detail::put(os, a), ...);
  return os.str();
}

// STD_TORCH_CHECK's contract (a std::runtime_error, which torch turns into a Python RuntimeError)
// without its "function, file:line," prefix, so messages read exactly as before the port.
#define SBOPS_CHECK(cond, ...)                                        \
  do {                                                                \
    if (!(cond)) throw std::runtime_error(::sbops::str(__VA_ARGS__)); \
  } while (0)

#define SBOPS_CHECK_DIM(x, n) \
  SBOPS_CHECK((x).dim() == (n), #x " must have ", (n), " dimensions, got shape ", (x).sizes())
#define SBOPS_CHECK_CONTIGUOUS(x) SBOPS_CHECK((x).is_contiguous(), #x " must be contiguous")
#define SBOPS_CHECK_SAME_DEVICE(x, y)                                                           \
  SBOPS_CHECK((x).device() == (y).device(), #x " and " #y " must be on the same device, got ", \
              (x).device(), " and ", (y).device())
#define SBOPS_CHECK_DTYPE(x, dt) \
  SBOPS_CHECK((x).scalar_type() == (dt), #x " must be ", (dt), ", got ", (x).scalar_type())
#define SBOPS_CHECK_INDEX_DTYPE(x)                                                       \
  SBOPS_CHECK((x).scalar_type() == ::sbops::kInt || (x).scalar_type() == ::sbops::kLong, \
              #x " must be int32 or int64, got ", (x).scalar_type())

// ---- tensor helpers through the stable ops (each one dispatches like its ATen namesake) --------
inline Tensor cast(const Tensor& t, ScalarType dt) { return torch::stable::to(t, dt); }
inline Tensor contig(const Tensor& t) { return torch::stable::contiguous(t); }
// t.to(dt).contiguous()  (names distinct from torch::stable's, which ADL would find too)
inline Tensor to_contig(const Tensor& t, ScalarType dt) { return contig(cast(t, dt)); }
// new tensors on like's device
inline Tensor empty_on(IntArrayRef sizes, ScalarType dt, const Tensor& like) {
  return torch::stable::new_empty(like, sizes, dt);
}
inline Tensor zeros_on(IntArrayRef sizes, ScalarType dt, const Tensor& like) {
  return torch::stable::new_zeros(like, sizes, dt);
}
inline Tensor full_on(IntArrayRef sizes, double value, ScalarType dt, const Tensor& like) {
  Tensor t = empty_on(sizes, dt, like);
  return torch::stable::fill_(t, value);
}
inline Tensor empty_as(const Tensor& t) { return empty_on(t.sizes(), t.scalar_type(), t); }
inline std::vector<int64_t> shape_of(const Tensor& t) { return t.sizes().vec(); }

// ---- dtype dispatch (ATen's AT_DISPATCH_* without ATen): `scalar_t` is defined in the body ----
namespace detail {
[[noreturn]] inline void unsupported(const char* name, ScalarType t) {
  throw std::runtime_error(str('"', name, "\" not implemented for '", t, "'"));
}
template <bool kHalfs, class F>
decltype(auto) dispatch_floating(ScalarType t, const char* name, F&& f) {
  switch (t) {
    case ScalarType::Float: return f(float{});
    case ScalarType::Double: return f(double{});
    default: break;
  }
  if constexpr (kHalfs) {
    if (t == ScalarType::BFloat16) return f(torch::headeronly::BFloat16{});
    if (t == ScalarType::Half) return f(torch::headeronly::Half{});
  }
  unsupported(name, t);
}
template <class F>
decltype(auto) dispatch_integral(ScalarType t, const char* name, F&& f) {
  switch (t) {
    case ScalarType::Byte: return f(uint8_t{});
    case ScalarType::Char: return f(int8_t{});
    case ScalarType::Short: return f(int16_t{});
    case ScalarType::Int: return f(int32_t{});
    case ScalarType::Long: return f(int64_t{});
    default: unsupported(name, t);
  }
}
}  // namespace detail

}  // namespace sbops

#define SBOPS_DISPATCH_FLOATING_TYPES(TYPE, NAME, ...) \
  ::sbops::detail::dispatch_floating<false>(TYPE, NAME, [&](auto sbops_tag_) { \
    using scalar_t = decltype(sbops_tag_);                                      \
    return __VA_ARGS__();                                                       \
  })
#define SBOPS_DISPATCH_FLOATING_AND_HALF_TYPES(TYPE, NAME, ...) \
  ::sbops::detail::dispatch_floating<true>(TYPE, NAME, [&](auto sbops_tag_) { \
    using scalar_t = decltype(sbops_tag_);                                     \
    return __VA_ARGS__();                                                      \
  })
#define SBOPS_DISPATCH_INTEGRAL_TYPES(TYPE, NAME, ...) \
  ::sbops::detail::dispatch_integral(TYPE, NAME, [&](auto sbops_tag_) { \
    using scalar_t = decltype(sbops_tag_);                              \
    return __VA_ARGS__();                                               \
  })
