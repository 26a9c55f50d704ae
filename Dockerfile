# moongate on Debian 12 (slim). Build and run:
#   docker build -t moongate .
#   docker run --rm -p 8080:8080 -v "$PWD/moongate.lua:/etc/moongate/moongate.lua:ro" moongate
# The config must listen on 0.0.0.0 (or *:PORT) to be reachable from outside
# the container. Reload: docker kill -s HUP <container>. doc/operations.md.

FROM debian:12-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config liblua5.4-dev libev-dev libhiredis-dev \
      libssl-dev node-llhttp libpcre2-dev libmimalloc-dev libc-ares-dev \
      libcrypt-dev libnghttp2-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_INSTALL_PREFIX=/usr/local \
 && cmake --build /build -j"$(nproc)" --target moongate \
 && DESTDIR=/out cmake --install /build

FROM debian:12-slim
# the shared libraries the binary links, lua-cjson (gw.json), CA
# certificates for TLS upstreams, tini as PID 1
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      liblua5.4-0 libev4 libhiredis0.14 libssl3 lua-cjson libpcre2-8-0 \
      libmimalloc2.0 libc-ares2 libcrypt1 libnghttp2-14 ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin moongate \
 && mkdir -p /etc/moongate
COPY --from=build /out/usr/local/ /usr/local/
USER moongate
WORKDIR /etc/moongate
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/moongate"]
CMD ["-c", "/etc/moongate/moongate.lua"]
