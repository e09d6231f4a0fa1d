#!/usr/bin/env bash
# The real storage servers the storage tests run against (issue 21):
# MinIO, Azurite and fake-gcs-server, each at the version pinned here and
# nowhere else (tests/realstorage reads these three lines for its skip
# messages). Sourced by .ci/run; run it by hand to install them locally:
#
#   source .ci/storage-servers.sh   # then go test ./tests/realstorage/
#
# It installs into $LOGBACKUP_SERVERS_DIR (default ~/.cache/logbackup-servers)
# and exports LOGBACKUP_MINIO, LOGBACKUP_AZURITE and LOGBACKUP_FAKEGCS, the
# binaries the tests start. An install already there is reused.
LOGBACKUP_MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
LOGBACKUP_FAKEGCS_VERSION=v1.56.1
LOGBACKUP_AZURITE_VERSION=3.37.0

logbackup_install_storage_servers() {
  local dir="${LOGBACKUP_SERVERS_DIR:-$HOME/.cache/logbackup-servers}"
  local bin="$dir/bin" t
  mkdir -p "$bin"
  # MinIO: the server only; users and policies come from its STS API in
  # the tests, so mc is not needed. No replace directives: go install works.
  if [ ! -x "$bin/minio-$LOGBACKUP_MINIO_VERSION" ]; then
    t=$SECONDS
    GOTOOLCHAIN=local GOBIN="$dir/gobin" go install "github.com/minio/minio@$LOGBACKUP_MINIO_VERSION"
    mv "$dir/gobin/minio" "$bin/minio-$LOGBACKUP_MINIO_VERSION"
    echo "minio $LOGBACKUP_MINIO_VERSION built in $((SECONDS - t))s"
  fi
  if [ ! -x "$bin/fake-gcs-server-$LOGBACKUP_FAKEGCS_VERSION" ]; then
    t=$SECONDS
    GOTOOLCHAIN=local GOBIN="$dir/gobin" go install "github.com/fsouza/fake-gcs-server@$LOGBACKUP_FAKEGCS_VERSION"
    mv "$dir/gobin/fake-gcs-server" "$bin/fake-gcs-server-$LOGBACKUP_FAKEGCS_VERSION"
    echo "fake-gcs-server $LOGBACKUP_FAKEGCS_VERSION built in $((SECONDS - t))s"
  fi
  local az="$dir/azurite-$LOGBACKUP_AZURITE_VERSION"
  if [ ! -x "$az/node_modules/.bin/azurite-blob" ]; then
    t=$SECONDS
    # Azurite 3.37 declares node >=22 but runs on the machine's Node 20
    # (npm only warns); the tests prove it.
    npm install --no-audit --no-fund --loglevel=error --prefix "$az" "azurite@$LOGBACKUP_AZURITE_VERSION"
    echo "azurite $LOGBACKUP_AZURITE_VERSION installed in $((SECONDS - t))s"
  fi
  export LOGBACKUP_MINIO="$bin/minio-$LOGBACKUP_MINIO_VERSION"
  export LOGBACKUP_FAKEGCS="$bin/fake-gcs-server-$LOGBACKUP_FAKEGCS_VERSION"
  export LOGBACKUP_AZURITE="$az/node_modules/.bin/azurite-blob"
}

logbackup_install_storage_servers
