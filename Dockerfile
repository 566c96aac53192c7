# syntax=docker/dockerfile:1
# Spot Guard: a small image running as a non-root user.
#
#   docker build -t spotguard:0.1.0 .
#   docker run --rm spotguard:0.1.0 --help

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache the registry and the build between runs; only the spotguard binary is built, in the
# `dist` profile (Cargo.toml: the release profile with fat LTO, one codegen unit and size
# optimisation, for the smallest resident memory).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked -p spotguard-bin --bin spotguard \
    && install -D -m 0755 target/dist/spotguard /out/spotguard

# glibc and libgcc only, no shell, no package manager; uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/spotguard /usr/local/bin/spotguard
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/spotguard"]
CMD ["run", "--config", "/etc/spotguard/config.toml"]
