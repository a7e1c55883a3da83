package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
)

// The checks of store.embedded.client_tls and peer_tls. Beyond the keys
// themselves they load the certificates as the member and this node's own
// client will, and verify them as the other side will: a certificate
// that fails here would make the embedded store fail to start, or the
// node fail to reach it, again and again, with less to go on.

// embeddedTLS checks client_tls and peer_tls of e. clientURLOK says that
// client_url is valid, so that its host can be checked against the
// member's certificate.
func (c *checker) embeddedTLS(e Embedded, clientURLOK bool) {
	if ct := e.ClientTLS; ct.Enabled() {
		member, roots, ok := c.listenerTLS(clientTLSKey, ct.Listener())
		if ok && clientURLOK {
			c.nodeTrustsMember(ct, member, roots, e.ClientURL)
		}
		c.nodeClientCert(ct, member, roots, ok)
	}
	if pt := e.PeerTLS; pt.Enabled() {
		member, roots, ok := c.listenerTLS(peerTLSKey, pt)
		if ok {
			c.peerCert(pt, member, roots)
		}
	}
}

// listenerTLS checks the keys of one listener's TLS, under key, and
// loads its files. ok says that they all loaded; roots is nil when
// ca_file is empty (the system's roots).
func (c *checker) listenerTLS(key string, t EmbeddedTLS) (member *tls.Certificate, roots *x509.CertPool, ok bool) {
	ok = true
	if t.CertFile == "" {
		c.add(key+".cert_file", "missing; with %s set the member serves TLS with this certificate: set cert_file and key_file, or remove %s", key, key)
		ok = false
	}
	if t.KeyFile == "" {
		c.add(key+".key_file", "missing; the member needs the private key of %s.cert_file: set it, or remove %s", key, key)
		ok = false
	}
	if t.ClientCertAuth && t.CAFile == "" {
		c.add(key+".client_cert_auth", "is true, but %s.ca_file is not set; give the CA bundle that verifies the certificates presented to the member, or set client_cert_auth to false", key)
		ok = false
	}
	certOK := c.readable(key+".cert_file", t.CertFile)
	keyOK := c.readable(key+".key_file", t.KeyFile)
	if certOK && keyOK {
		member = c.keyPair(key+".cert_file", key+".key_file", t.CertFile, t.KeyFile)
	}
	ok = ok && member != nil
	if c.readable(key+".ca_file", t.CAFile) {
		roots = c.caPool(key+".ca_file", t.CAFile)
		ok = ok && roots != nil
	} else if t.CAFile != "" {
		ok = false
	}
	return member, roots, ok
}

// keyPair loads a certificate and its key as the TLS stack will; nil,
// reported under certField, if they are not a PEM certificate and its
// key.
func (c *checker) keyPair(certField, keyField, certFile, keyFile string) *tls.Certificate {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err == nil && pair.Leaf == nil {
		pair.Leaf, err = x509.ParseCertificate(pair.Certificate[0])
	}
	if err != nil {
		c.add(certField, "%q with %s %q: %v; give a PEM certificate and, in %s, its PEM private key", certFile, keyField, keyFile, err, keyField)
		return nil
	}
	return &pair
}

// caPool loads a CA bundle; nil, reported under field, if it holds no
// PEM certificate.
func (c *checker) caPool(field, path string) *x509.CertPool {
	pem, err := os.ReadFile(path)
	if err != nil {
		c.add(field, "%q cannot be read (%v); give the path of a readable file", path, errors.Unwrap(err))
		return nil
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		c.add(field, "%q holds no PEM certificate; give the CA bundle (PEM \"CERTIFICATE\" blocks) that signed the certificates", path)
		return nil
	}
	return pool
}

// nodeTrustsMember checks that this node's own client, which dials
// client_url and verifies the member against client_tls.ca_file (or the
// system's roots), accepts the member's certificate.
func (c *checker) nodeTrustsMember(ct EmbeddedClientTLS, member *tls.Certificate, roots *x509.CertPool, clientURL string) {
	u, err := url.Parse(clientURL)
	if err != nil {
		return
	}
	host := u.Hostname()
	err = verify(member, roots, host, x509.ExtKeyUsageServerAuth)
	if err == nil {
		return
	}
	const who = "this node's own client, which dials store.embedded.client_url, would refuse it"
	field := clientTLSKey + ".cert_file"
	var hostErr x509.HostnameError
	var authErr x509.UnknownAuthorityError
	switch {
	case errors.As(err, &hostErr):
		c.add(field, "%q does not name %s, the host of store.embedded.client_url, so %s; reissue it with %s among its subject alternative names, or write client_url with a host it names", ct.CertFile, host, who, host)
	case errors.As(err, &authErr) && ct.CAFile == "":
		c.add(field, "%q is not signed by a CA this system trusts, and %s.ca_file is not set, so %s; set ca_file to the CA bundle that signed it", ct.CertFile, clientTLSKey, who)
	case errors.As(err, &authErr):
		c.add(field, "%q is not signed by the CA in %s.ca_file %q, so %s; set ca_file to the CA bundle that signed it", ct.CertFile, clientTLSKey, ct.CAFile, who)
	default:
		c.add(field, "%q %s, so %s; %s", ct.CertFile, certProblem(err, "server"), who, certFix(err, "serverAuth"))
	}
}

// nodeClientCert checks the rule for the certificate this node's own
// client presents to its member (see EmbeddedClientTLS.NodeClientCert):
// with client_cert_auth, client_cert_file and client_key_file if set,
// else the member's own certificate, which must then allow client
// authentication; and it must verify against ca_file, as the member
// checks it. member and roots are what listenerTLS loaded, ok whether
// all of it loaded.
func (c *checker) nodeClientCert(ct EmbeddedClientTLS, member *tls.Certificate, roots *x509.CertPool, ok bool) {
	certKey, keyKey := clientTLSKey+".client_cert_file", clientTLSKey+".client_key_file"
	explicit := ct.ClientCertFile != "" || ct.ClientKeyFile != ""
	if explicit && !ct.ClientCertAuth {
		field := certKey
		if ct.ClientCertFile == "" {
			field = keyKey
		}
		c.add(field, "is set, but %s.client_cert_auth is not true, so the member asks no client for a certificate and this node's client presents none; remove it, or set client_cert_auth: true", clientTLSKey)
		return
	}
	if !ct.ClientCertAuth {
		return
	}
	pair, field, file := member, clientTLSKey+".cert_file", ct.CertFile
	if explicit {
		switch {
		case ct.ClientKeyFile == "":
			c.add(certKey, "is set but %s is not; this node's client certificate needs its key: set both or neither", keyKey)
			return
		case ct.ClientCertFile == "":
			c.add(keyKey, "is set but %s is not; this node's client key needs its certificate: set both or neither", certKey)
			return
		}
		certOK, keyOK := c.readable(certKey, ct.ClientCertFile), c.readable(keyKey, ct.ClientKeyFile)
		if !certOK || !keyOK {
			return
		}
		pair, field, file = c.keyPair(certKey, keyKey, ct.ClientCertFile, ct.ClientKeyFile), certKey, ct.ClientCertFile
	}
	if pair == nil || roots == nil || !ok {
		return // reported already
	}
	err := verify(pair, roots, "", x509.ExtKeyUsageClientAuth)
	if err == nil {
		return
	}
	var authErr x509.UnknownAuthorityError
	var invalid x509.CertificateInvalidError
	switch {
	case !explicit && errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage:
		c.add(field, "%q is not valid for client authentication (its extended key usage lacks clientAuth), but with client_cert_auth this node's own client presents it to the member; reissue it with clientAuth as well as serverAuth, or set %s and %s to a client certificate signed by the CA in %s.ca_file", file, certKey, keyKey, clientTLSKey)
	case errors.As(err, &authErr):
		c.add(field, "%q is not signed by the CA in %s.ca_file %q, which the member checks client certificates against, so it would refuse this node's own client; use a certificate of that CA, or add its CA to ca_file", file, clientTLSKey, ct.CAFile)
	default:
		c.add(field, "%q %s, so the member would refuse this node's own client, which presents it; %s", file, certProblem(err, "client"), certFix(err, "clientAuth"))
	}
}

// peerCert checks the member's certificate as the other members will,
// assuming they share this member's peer_tls.ca_file (or, if it is
// empty, the system's roots): they verify it when they dial this member,
// and with client_cert_auth also when this member dials them, which
// needs the clientAuth extended key usage.
func (c *checker) peerCert(pt EmbeddedTLS, member *tls.Certificate, roots *x509.CertPool) {
	field := peerTLSKey + ".cert_file"
	const who = "the other members (which normally share ca_file) would refuse it"
	usages := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	if pt.ClientCertAuth {
		usages = append(usages, x509.ExtKeyUsageClientAuth)
	}
	for _, usage := range usages {
		err := verify(member, roots, "", usage)
		if err == nil {
			continue
		}
		var authErr x509.UnknownAuthorityError
		var invalid x509.CertificateInvalidError
		switch {
		case errors.As(err, &invalid) && invalid.Reason == x509.IncompatibleUsage && usage == x509.ExtKeyUsageClientAuth:
			c.add(field, "%q is not valid for client authentication (its extended key usage lacks clientAuth), but with %s.client_cert_auth the member presents it when it dials the other members, which would refuse it; reissue it with clientAuth as well as serverAuth, or set client_cert_auth to false", pt.CertFile, peerTLSKey)
		case errors.As(err, &authErr) && pt.CAFile == "":
			c.add(field, "%q is not signed by a CA this system trusts, and %s.ca_file is not set, so %s; set ca_file to the CA bundle that signed it, on every member", pt.CertFile, peerTLSKey, who)
		case errors.As(err, &authErr):
			c.add(field, "%q is not signed by the CA in %s.ca_file %q, so %s; set ca_file to the CA bundle that signed it, on every member", pt.CertFile, peerTLSKey, pt.CAFile, who)
		default:
			name, eku := "server", "serverAuth"
			if usage == x509.ExtKeyUsageClientAuth {
				name, eku = "client", "clientAuth"
			}
			c.add(field, "%q %s, so %s; %s", pt.CertFile, certProblem(err, name), who, certFix(err, eku))
		}
		return
	}
}

// verify checks pair's certificate as a TLS peer would: for usage,
// against roots (nil: the system's), for host unless it is "", with the
// intermediates that follow it in the file.
func verify(pair *tls.Certificate, roots *x509.CertPool, host string, usage x509.ExtKeyUsage) error {
	inter := x509.NewCertPool()
	for _, der := range pair.Certificate[1:] {
		if cert, err := x509.ParseCertificate(der); err == nil {
			inter.AddCert(cert)
		}
	}
	_, err := pair.Leaf.Verify(x509.VerifyOptions{
		Roots: roots, Intermediates: inter, DNSName: host,
		KeyUsages: []x509.ExtKeyUsage{usage},
	})
	return err
}

// certProblem says why a certificate failed verify for a role ("server"
// or "client"), without the fix.
func certProblem(err error, role string) string {
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) {
		switch invalid.Reason {
		case x509.Expired:
			return "has expired or is not valid yet"
		case x509.IncompatibleUsage:
			return fmt.Sprintf("is not valid for %s authentication (its extended key usage does not allow it)", role)
		}
	}
	return fmt.Sprintf("cannot be verified (%v)", err)
}

// certFix is the fix for certProblem.
func certFix(err error, eku string) string {
	var invalid x509.CertificateInvalidError
	if errors.As(err, &invalid) {
		switch invalid.Reason {
		case x509.Expired:
			return "renew it"
		case x509.IncompatibleUsage:
			return "reissue it with the " + eku + " extended key usage"
		}
	}
	return "check it against its CA, or reissue it"
}
