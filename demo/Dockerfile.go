# Demo services for compose.yaml, one image: the HTTP test server of issue 4 (run as v1 and v2), its
# gray-release router (both from tests/go), and the load generator (demo/loadgen, which also serves
# as the health probe: distroless has no shell or curl). Build context: the repository root.
FROM golang:1.23-bookworm AS build
WORKDIR /src
COPY tests/go/ ./gohttp/
COPY demo/loadgen/ ./loadgen/
RUN cd gohttp && CGO_ENABLED=0 go build -o /out/server ./server && CGO_ENABLED=0 go build -o /out/router ./router \
 && cd ../loadgen && CGO_ENABLED=0 go build -o /out/loadgen .

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
