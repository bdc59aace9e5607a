# pymap and pymap-deliver in one image, one environment, for trying things:
#   docker build -t pymap-deliver .
#   docker run --rm -p 1143:1143 -p 2424:2424 pymap-deliver
# then deliver over LMTP to port 2424 (user demouser) and read it back over
# IMAP on 1143 (demouser / demopass). In-memory demo data: nothing is kept.
# For a real server use the units of contrib/systemd instead.
# (tests/test_docker.py builds and tries it where a container engine runs.)
FROM python:3.11-slim

ARG PYMAP_SPEC="pymap[admin,macaroon,sieve]==0.36.7"
RUN useradd --system --home-dir /var/lib/pymap --create-home pymap \
    && install -d -o pymap -g pymap /run/pymap
COPY . /src
# One environment: pymap-deliver runs on pymap's pinned protobuf.
RUN python -m venv /opt/pymap-deliver \
    && /opt/pymap-deliver/bin/pip install --no-cache-dir "$PYMAP_SPEC" /src \
    && /opt/pymap-deliver/bin/pip check \
    && install -m 0755 /src/contrib/docker/pymap-with-deliver /usr/local/bin/ \
    && rm -rf /src
ENV PATH=/opt/pymap-deliver/bin:$PATH \
    TMPDIR=/run/pymap
USER pymap
EXPOSE 1143 2424
CMD ["pymap-with-deliver"]
