package greeter

// NewCACertPEM makes a throwaway CA as RunServer does and returns its
// certificate, for tests that need a CA file without a server.
func NewCACertPEM() ([]byte, error) {
	_, caPEM, err := throwawayCertificate()
	return caPEM, err
}
