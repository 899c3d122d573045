# Sourced by the cluster servers that speak TLS (redis_tls.sh, s3_tls.sh): a
# test CA, a server certificate for 127.0.0.1 and localhost, and a client
# certificate, made once with openssl under $MAILYARD_CLUSTER_HOME/tls-ca.
# Tests trust ca.crt and present client.crt where a server asks for one.
TLS_CA_DIR=${MAILYARD_CLUSTER_HOME:-$HOME/.cache/mailyard-cluster}/tls-ca

# _tls_sign NAME EXTENSIONS: a P-256 key and its certificate, signed by the CA.
_tls_sign() {
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$TLS_CA_DIR/$1.key" -out "$TLS_CA_DIR/$1.csr" -subj "/CN=mailyard test $1" 2>/dev/null
    printf '%s\n' "$2" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" \
        > "$TLS_CA_DIR/$1.ext"
    openssl x509 -req -in "$TLS_CA_DIR/$1.csr" -CA "$TLS_CA_DIR/ca.crt" -CAkey "$TLS_CA_DIR/ca.key" \
        -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$TLS_CA_DIR/$1.ext" \
        -out "$TLS_CA_DIR/$1.crt" 2>/dev/null
    rm -f "$TLS_CA_DIR/$1.csr" "$TLS_CA_DIR/$1.ext"
}

tls_test_ca() {
    [ -f "$TLS_CA_DIR/client.crt" ] && return
    command -v openssl >/dev/null || { echo "openssl is not installed" >&2; return 1; }
    # Made in a scratch dir and renamed, so a half-made CA is never used.
    local final=$TLS_CA_DIR
    TLS_CA_DIR=$final.tmp.$$
    rm -rf "$TLS_CA_DIR" && mkdir -p "$TLS_CA_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$TLS_CA_DIR/ca.key" -out "$TLS_CA_DIR/ca.crt" -days 3650 \
        -subj "/CN=mailyard test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    _tls_sign server "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth"
    _tls_sign client "extendedKeyUsage=clientAuth"
    chmod 600 "$TLS_CA_DIR"/*.key
    rm -rf "$final" && mv "$TLS_CA_DIR" "$final"
    TLS_CA_DIR=$final
}

# The variables tests read to trust the CA and present the client certificate.
tls_test_ca_env() {
    echo "export MAILYARD_TLS_CA=$TLS_CA_DIR/ca.crt"
    echo "export MAILYARD_TLS_CLIENT_CERT=$TLS_CA_DIR/client.crt"
    echo "export MAILYARD_TLS_CLIENT_KEY=$TLS_CA_DIR/client.key"
}
