// Command istio-interop checks that Istio's own CA code accepts the `cacerts`
// files trustplane writes, and that workload certificates Istio issues from
// them verify under a given trust bundle.
//
//	istio-interop sign    --cacerts DIR --spiffe-id ID --out leaf-chain.pem [--ttl 1h] [--key-out key.pem] [--key-alg rsa|ec]
//	istio-interop verify  --chain leaf-chain.pem --roots root-cert.pem [--spiffe-id ID]
//	istio-interop version
//
// `sign` loads DIR exactly as istiod does for a plugged-in CA
// (pilot/pkg/bootstrap/istio_ca.go: detectSigningCABundleAndCRL +
// ca.NewPluggedCertIstioCAOptions + ca.NewIstioCA), in whichever of its two
// layouts istiod would pick (the kubernetes.io/tls one when DIR/tls.crt
// exists, else the istiod one), generates a workload key and CSR the way
// istio-agent does (pkiutil.GenCSR with Host = SPIFFE ID), signs it with
// IstioCA.Sign and writes what istiod's CA server returns to a workload: the
// leaf, then the CA's certificate chain. Its OK line names the layout used.
//
// Exit codes: 0 success (one "OK ..." line on stdout), 1 rejected / failed
// check ("error: <subcommand>: <reason>" on stderr), 2 usage error.
package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/security/pkg/cmd"
	"istio.io/istio/security/pkg/pki/ca"
	pkiutil "istio.io/istio/security/pkg/pki/util"
)

// The Istio release this program is pinned to (see go.mod and README.md for
// how the commit was established). `version` cross-checks it against the
// istio.io/istio module version actually linked into the binary.
const (
	istioRelease = "1.31.0"
	istioCommit  = "eed52ebb66ade45214088877b0f82855d954060d"
	istioModule  = "istio.io/istio"
)

func main() {
	// Istio's loggers write to stdout by default; keep stdout for our results.
	logOpts := istiolog.DefaultOptions()
	logOpts.OutputPaths = []string{"stderr"}
	logOpts.ErrorOutputPaths = []string{"stderr"}
	_ = istiolog.Configure(logOpts)

	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "sign":
		err = runSign(os.Args[2:])
	case "verify":
		err = runVerify(os.Args[2:])
	case "version":
		err = runVersion(os.Args[2:])
	case "-h", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "error: unknown subcommand %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(os.Stderr, "error: %v\n", err)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "error: %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  istio-interop sign    --cacerts DIR --spiffe-id ID --out FILE [--ttl 1h] [--key-out FILE] [--key-alg rsa|ec]
                        [--default-ttl 24h] [--max-ttl 2160h]
  istio-interop verify  --chain FILE --roots FILE [--spiffe-id ID] [--at RFC3339]
  istio-interop version
`)
}

func runSign(args []string) error {
	fs := flag.NewFlagSet("sign", flag.ContinueOnError)
	dir := fs.String("cacerts", "", "istiod's /etc/cacerts: ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem, or the kubernetes.io/tls keys tls.crt, tls.key, ca.crt (used whenever tls.crt exists, as istiod does)")
	id := fs.String("spiffe-id", "", "SPIFFE ID of the workload, e.g. spiffe://cluster.local/ns/default/sa/x")
	out := fs.String("out", "", "where to write the leaf followed by the CA chain (cert-chain.pem, or tls.crt then ca.crt) (PEM)")
	keyOut := fs.String("key-out", "", "optional: where to write the workload private key (PEM)")
	keyAlg := fs.String("key-alg", "rsa", "workload key: rsa (istio-agent's default, 2048 bit) or ec (P-256)")
	ttl := fs.Duration("ttl", time.Hour, "requested workload certificate lifetime (istiod rejects > --max-ttl)")
	defTTL := fs.Duration("default-ttl", cmd.DefaultWorkloadCertTTL, "istiod DEFAULT_WORKLOAD_CERT_TTL")
	maxTTL := fs.Duration("max-ttl", cmd.DefaultMaxWorkloadCertTTL, "istiod MAX_WORKLOAD_CERT_TTL")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if *dir == "" || *id == "" || *out == "" {
		return usageError{"sign needs --cacerts, --spiffe-id and --out"}
	}
	if fs.NArg() != 0 {
		return usageError{fmt.Sprintf("unexpected arguments: %v", fs.Args())}
	}

	bundle, layout, err := detectSigningCABundleAndCRL(*dir)
	if err != nil {
		return fmt.Errorf("istiod cannot tell the layout of %s: %v", *dir, err)
	}
	// caRSAKeySize: istiod passes CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE (default 2048).
	opts, err := ca.NewPluggedCertIstioCAOptions(bundle, *defTTL, *maxTTL, 2048)
	if err != nil {
		return fmt.Errorf("istiod would reject %s: NewPluggedCertIstioCAOptions: %v", *dir, err)
	}
	istioCA, err := ca.NewIstioCA(opts)
	if err != nil {
		return fmt.Errorf("istiod would reject %s: NewIstioCA: %v", *dir, err)
	}

	// The workload side, as istio-agent builds its CSR (secretcache.generateNewSecret).
	csrOpts := pkiutil.CertOptions{Host: *id, RSAKeySize: 2048}
	switch *keyAlg {
	case "rsa":
	case "ec":
		csrOpts.ECSigAlg = pkiutil.EcdsaSigAlg
		csrOpts.ECCCurve = pkiutil.P256Curve
	default:
		return usageError{fmt.Sprintf("--key-alg must be rsa or ec, not %q", *keyAlg)}
	}
	csrPEM, keyPEM, err := pkiutil.GenCSR(csrOpts)
	if err != nil {
		return fmt.Errorf("GenCSR: %v", err)
	}

	// As istiod's CA server (security/pkg/server/ca/server.go CreateCertificate)
	// does with no custom cert signer: Sign, then append the CA's chain
	// (cert-chain.pem, or tls.crt followed by ca.crt).
	leafPEM, err := istioCA.Sign(csrPEM, ca.CertOpts{SubjectIDs: []string{*id}, TTL: *ttl, ForCA: false})
	if err != nil {
		return fmt.Errorf("IstioCA.Sign: %v", err)
	}
	chain := append([]byte{}, leafPEM...)
	chain = append(chain, istioCA.GetCAKeyCertBundle().GetCertChainPem()...)
	if err := os.WriteFile(*out, chain, 0o644); err != nil {
		return err
	}
	if *keyOut != "" {
		if err := os.WriteFile(*keyOut, keyPEM, 0o600); err != nil {
			return err
		}
	}
	leaf, err := pkiutil.ParsePemEncodedCertificate(leafPEM)
	if err != nil {
		return fmt.Errorf("parse issued leaf: %v", err)
	}
	fmt.Printf("OK signed %s layout=%s serial=%x notAfter=%s issuer=%q chain=%d certs -> %s\n",
		*id, layout, leaf.SerialNumber, leaf.NotAfter.UTC().Format(time.RFC3339), leaf.Issuer.String(),
		countCerts(chain), *out)
	return nil
}

// detectSigningCABundleAndCRL is istiod's function of that name
// (pilot/pkg/bootstrap/istio_ca.go) with its LocalCertDir (env ROOT_CA_DIR)
// set to dir and PILOT_ENABLE_CA_CRL at its default, true. It is copied rather
// than called because istiod's is unexported and reads its directory from the
// environment. Like istiod, it picks the layout from the files alone: the
// kubernetes.io/tls one whenever tls.crt exists (even next to the istiod
// files), else the istiod one. It also returns the layout's name for the OK
// line: "tls" or "istiod".
func detectSigningCABundleAndCRL(dir string) (ca.SigningCAFileBundle, string, error) {
	tlsSigningFile := filepath.Join(dir, ca.TLSSecretCACertFile)
	if _, err := os.Stat(tlsSigningFile); err == nil {
		// The root bundle is ca.crt, and the chain is tls.crt followed by
		// ca.crt, so tls.crt need not carry the root. No CRL in this layout.
		return ca.SigningCAFileBundle{
			RootCertFile: filepath.Join(dir, ca.TLSSecretRootCertFile),
			CertChainFiles: []string{
				tlsSigningFile,
				filepath.Join(dir, ca.TLSSecretRootCertFile),
			},
			SigningCertFile: tlsSigningFile,
			SigningKeyFile:  filepath.Join(dir, ca.TLSSecretCAPrivateKeyFile),
		}, "tls", nil
	} else if !os.IsNotExist(err) {
		return ca.SigningCAFileBundle{}, "", err
	}
	bundle := ca.SigningCAFileBundle{
		RootCertFile:    filepath.Join(dir, ca.RootCertFile),
		CertChainFiles:  []string{filepath.Join(dir, ca.CertChainFile)},
		SigningCertFile: filepath.Join(dir, ca.CACertFile),
		SigningKeyFile:  filepath.Join(dir, ca.CAPrivateKeyFile),
	}
	if _, err := os.Stat(filepath.Join(dir, ca.CACRLFile)); err == nil {
		bundle.CRLFile = filepath.Join(dir, ca.CACRLFile)
	}
	return bundle, "istiod", nil
}

func runVerify(args []string) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	chainFile := fs.String("chain", "", "PEM: leaf first, then intermediates (anything after the leaf is offered as an intermediate)")
	rootsFile := fs.String("roots", "", "PEM trust bundle: one or more root certificates (root-cert.pem)")
	id := fs.String("spiffe-id", "", "optional: the leaf must carry exactly this URI SAN")
	at := fs.String("at", "", "optional: verify at this time (RFC3339) instead of now")
	if err := fs.Parse(args); err != nil {
		return usageError{err.Error()}
	}
	if *chainFile == "" || *rootsFile == "" {
		return usageError{"verify needs --chain and --roots"}
	}
	if fs.NArg() != 0 {
		return usageError{fmt.Sprintf("unexpected arguments: %v", fs.Args())}
	}

	certs, err := readCerts(*chainFile)
	if err != nil {
		return err
	}
	if len(certs) == 0 {
		return fmt.Errorf("%s holds no certificate", *chainFile)
	}
	roots, err := readCerts(*rootsFile)
	if err != nil {
		return err
	}
	if len(roots) == 0 {
		return fmt.Errorf("%s holds no certificate", *rootsFile)
	}
	rootPool := x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	interPool := x509.NewCertPool()
	for _, c := range certs[1:] {
		interPool.AddCert(c)
	}
	leaf := certs[0]
	now := time.Now()
	if *at != "" {
		if now, err = time.Parse(time.RFC3339, *at); err != nil {
			return usageError{fmt.Sprintf("--at: %v", err)}
		}
	}

	// An Istio workload certificate is used both ways in mTLS: as a server
	// certificate (the peer checks serverAuth) and as a client certificate
	// (clientAuth). Check each purpose on its own, as a Go TLS peer would.
	var chainLen int
	for _, usage := range []struct {
		name string
		eku  x509.ExtKeyUsage
	}{{"serverAuth", x509.ExtKeyUsageServerAuth}, {"clientAuth", x509.ExtKeyUsageClientAuth}} {
		chains, err := leaf.Verify(x509.VerifyOptions{
			Roots:         rootPool,
			Intermediates: interPool,
			CurrentTime:   now,
			KeyUsages:     []x509.ExtKeyUsage{usage.eku},
		})
		if err != nil {
			return fmt.Errorf("x509 verify (%s) of leaf %s (issuer %q) against %d root(s) in %s: %v",
				usage.name, leafName(leaf), leaf.Issuer.String(), len(roots), *rootsFile, err)
		}
		chainLen = len(chains[0])
	}

	if *id != "" {
		var uris []string
		for _, u := range leaf.URIs {
			uris = append(uris, u.String())
		}
		if len(uris) != 1 || uris[0] != *id {
			return fmt.Errorf("leaf URI SANs are %v, want exactly [%s]", uris, *id)
		}
	}
	fmt.Printf("OK verified leaf %s (serverAuth+clientAuth) via %d-cert chain to a root in %s (%d root(s))\n",
		leafName(leaf), chainLen, *rootsFile, len(roots))
	return nil
}

func runVersion(args []string) error {
	if len(args) != 0 {
		return usageError{"version takes no arguments"}
	}
	linked := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == istioModule {
				linked = m.Version
				if m.Replace != nil {
					linked += " => " + m.Replace.Path + " " + m.Replace.Version
				}
			}
		}
	}
	fmt.Printf("istio %s (commit %s, module %s %s)\n", istioRelease, istioCommit, istioModule, linked)
	if linked != "unknown" && !strings.HasSuffix(linked, "-"+istioCommit[:12]) {
		return fmt.Errorf("linked %s %s is not commit %s", istioModule, linked, istioCommit)
	}
	return nil
}

func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %v", path, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// leafName names a leaf by its URI SANs (Istio leaves have an empty subject).
func leafName(c *x509.Certificate) string {
	var ids []string
	for _, u := range c.URIs {
		ids = append(ids, u.String())
	}
	if len(ids) == 0 {
		return fmt.Sprintf("%q", c.Subject.String())
	}
	return strings.Join(ids, ",")
}

func countCerts(pemBytes []byte) int {
	n := 0
	for {
		var block *pem.Block
		block, pemBytes = pem.Decode(pemBytes)
		if block == nil {
			return n
		}
		n++
	}
}
