# The operator image for Docker hosts: a static binary on a distroless,
# non-root base.
#   docker build -t dbps-operator:0.1.0 .
FROM rust:1.89-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dbps-operator --bin dbps-operator \
 && install -D -m 0755 target/release/dbps-operator /out/dbps-operator

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/dbps-operator /dbps-operator
USER 65532:65532
ENTRYPOINT ["/dbps-operator"]
CMD ["run"]
