# The CPU image (the default target, what `docker compose up` builds).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release

# The CUDA build (`--target cuda`, compose's `gpu` profile): candle's kernels compiled with nvcc for
# CUDA_COMPUTE_CAP (90: Hopper, H100/H200; 80: A100; 89: L4/L40). The binary loads cuBLAS, cuRAND and NVRTC
# at run time from the runtime image below, and the driver from the host (`gpus: all`).
FROM nvidia/cuda:13.0.0-devel-ubuntu24.04 AS cuda-build
ARG CUDA_COMPUTE_CAP=90
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} PATH=/root/.cargo/bin:${PATH}
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl gcc pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
WORKDIR /src
COPY . .
RUN cargo build --release --features cuda

FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04 AS cuda
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=cuda-build /src/target/release/prefloop /usr/local/bin/prefloop
ENV PREFLOOP_DEVICE=cuda PREFLOOP_DTYPE=bf16
ENTRYPOINT ["prefloop"]
CMD ["serve"]

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/prefloop /usr/local/bin/prefloop
ENTRYPOINT ["prefloop"]
CMD ["serve"]
