// A throwaway ActiveMQ Classic broker for dbsync's tests (devtools/services/activemq.py compiles and runs it).
// One argument: a properties file (owner-only; it holds the passwords) naming the data directory, the STOMP and
// STOMP+TLS ports, the PKCS12 keystore, the users with their groups, and the authorization entries.
// The broker stamps the authenticated user on every message as JMSXUserID (populateJMSXUserID), which the receiver
// trusts; the statistics plugin answers `dbsync status` (ActiveMQ.Statistics.Destination.<queue>).

import java.io.FileInputStream;
import java.security.KeyStore;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import javax.net.ssl.KeyManagerFactory;
import org.apache.activemq.broker.BrokerPlugin;
import org.apache.activemq.broker.BrokerService;
import org.apache.activemq.broker.SslContext;
import org.apache.activemq.command.ActiveMQQueue;
import org.apache.activemq.command.ActiveMQTopic;
import org.apache.activemq.filter.DestinationMapEntry;
import org.apache.activemq.plugin.StatisticsBrokerPlugin;
import org.apache.activemq.security.AuthenticationUser;
import org.apache.activemq.security.AuthorizationEntry;
import org.apache.activemq.security.AuthorizationPlugin;
import org.apache.activemq.security.DefaultAuthorizationMap;
import org.apache.activemq.security.SimpleAuthenticationPlugin;
import org.apache.activemq.security.TempDestinationAuthorizationEntry;

public final class DbsyncActiveMq {
    private DbsyncActiveMq() {
    }

    public static void main(String[] args) throws Exception {
        Properties p = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            p.load(in);
        }
        List<AuthenticationUser> users = new ArrayList<>();
        for (String name : p.stringPropertyNames()) {
            if (name.startsWith("user.")) {
                String user = name.substring(5);
                users.add(new AuthenticationUser(user, p.getProperty(name), p.getProperty("groups." + user)));
            }
        }
        SimpleAuthenticationPlugin authentication = new SimpleAuthenticationPlugin(users);
        authentication.setAnonymousAccessAllowed(false);
        List<DestinationMapEntry> entries = new ArrayList<>();
        for (int i = 0; p.getProperty("acl." + i) != null; i++) {
            // kind|pattern|read groups|write groups|admin groups
            String[] f = p.getProperty("acl." + i).split("\\|", -1);
            AuthorizationEntry entry = new AuthorizationEntry();
            if (f[0].equals("topic")) {
                entry.setDestination(new ActiveMQTopic(f[1]));
            } else {
                entry.setDestination(new ActiveMQQueue(f[1]));
            }
            entry.setRead(f[2]);
            entry.setWrite(f[3]);
            entry.setAdmin(f[4]);
            entries.add(entry);
        }
        DefaultAuthorizationMap map = new DefaultAuthorizationMap(entries);
        TempDestinationAuthorizationEntry temp = new TempDestinationAuthorizationEntry();
        temp.setRead(p.getProperty("temp.groups"));
        temp.setWrite(p.getProperty("temp.groups"));
        temp.setAdmin(p.getProperty("temp.groups"));
        map.setTempDestinationAuthorizationEntry(temp);
        BrokerService broker = new BrokerService();
        broker.setBrokerName("dbsync");
        broker.setDataDirectory(p.getProperty("data"));
        broker.setPersistent(true);
        broker.setUseJmx(false);
        broker.setUseShutdownHook(true);
        broker.setPopulateJMSXUserID(true);
        broker.setUseAuthenticatedPrincipalForJMSXUserID(true);
        broker.setPlugins(new BrokerPlugin[] {authentication, new AuthorizationPlugin(map), new StatisticsBrokerPlugin()});
        KeyStore keys = KeyStore.getInstance("PKCS12");
        char[] password = p.getProperty("keystore.password").toCharArray();
        try (FileInputStream in = new FileInputStream(p.getProperty("keystore"))) {
            keys.load(in, password);
        }
        KeyManagerFactory factory = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        factory.init(keys, password);
        broker.setSslContext(new SslContext(factory.getKeyManagers(), null, null));
        String host = p.getProperty("host");
        broker.addConnector("stomp://" + host + ":" + p.getProperty("stomp_port"));
        broker.addConnector("stomp+ssl://" + host + ":" + p.getProperty("tls_port"));
        broker.start();
        broker.waitUntilStopped();
    }
}
