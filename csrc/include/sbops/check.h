// Torch-side input checks shared by the C++ bindings of every backend.  Kernels themselves
// stay torch-free; bindings check what they rely on so nothing is read or written out of bounds.
#pragma once
#include <torch/library.h>
#include <ATen/ATen.h>

#define SBOPS_CHECK_DIM(x, n) \
  TORCH_CHECK((x).dim() == (n), #x " must have ", (n), " dimensions, got shape ", (x).sizes())
#define SBOPS_CHECK_CONTIGUOUS(x) TORCH_CHECK((x).is_contiguous(), #x " must be contiguous")
#define SBOPS_CHECK_SAME_DEVICE(x, y)                                                     \
  TORCH_CHECK((x).device() == (y).device(), #x " and " #y " must be on the same device, got ", \
              (x).device(), " and ", (y).device())
#define SBOPS_CHECK_DTYPE(x, dt) \
  TORCH_CHECK((x).scalar_type() == (dt), #x " must be ", (dt), ", got ", (x).scalar_type())
#define SBOPS_CHECK_INDEX_DTYPE(x)                                                         \
  TORCH_CHECK((x).scalar_type() == at::kInt || (x).scalar_type() == at::kLong,             \
              #x " must be int32 or int64, got ", (x).scalar_type())
